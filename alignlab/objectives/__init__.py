"""Objectives: what an update optimises on the samples a round builder made (docs/extending.md, "An objective").

A round builder (a method: plain rollouts, B²-DiffuRL's branch families, D-Fusion's fused pairs) fills
`method.buffer` with the round — `traj` (the trajectories, `alignlab.samplers.ddim.Trajectory`), `negative`
(the empty prompt's embedding) and what its objective reads: `advantages` (one per row) for a policy gradient,
`winners` / `losers` (rows of `traj`) for a preference loss — and cuts it into micro-batches. An objective is a
small object with one contract:

- `trains_on`: "advantages" or "pairs", what it reads from the buffer (a method whose rounds make the other is
  refused at start-up);
- `renoise`: None, or which fresh noise its micro-batches carry: "random_t" a random timestep `t` and `noise` per
  row (Diffusion-DPO), "trained_steps" `noise` per row and trained step (DiffusionNFT);
- `group_advantages`: None (the round builder's own normalisation of rewards), or "round_std" / "group_std":
  each reward against its group's — the prompt's samples in the round, a branch family's siblings — over the
  round's or the group's std (GRPO, DiffusionNFT);
- `needs_reference`: whether it compares with the frozen pre-trained model (the method then requires one);
- `prepare(method)`: once per round, after the buffer is filled (e.g. the reference's log-probs);
- `backward_passes(method)`: backward passes one micro-batch makes (a data-parallel idle step makes as many);
- `train(method, batch)`: the micro-batch's losses and backward passes (`method.manual_backward`, scaled by
  `1 / method.grad_accum`), its metrics appended to `method.stats`.
"""

from alignlab.objectives.diffusion_dpo import DiffusionDPO
from alignlab.objectives.dpok import DPOK
from alignlab.objectives.grpo import GRPO
from alignlab.objectives.nft import DiffusionNFT
from alignlab.objectives.ppo_clip import PPOClip
from alignlab.objectives.trajectory_dpo import TrajectoryDPO

__all__ = ["DPOK", "GRPO", "DiffusionDPO", "DiffusionNFT", "PPOClip", "TrajectoryDPO"]
