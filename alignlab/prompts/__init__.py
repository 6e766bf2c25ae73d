"""Prompt sets with train/test splits."""

from alignlab.prompts.prompt_set import PromptSet, load_prompt_file

__all__ = ["PromptSet", "load_prompt_file"]
