"""The learner core's plasticity methods for ordinary PyTorch code and Stable-Baselines3 agents.

- optim.py: Adam and SGD as torch optimizers with the core's exact per-unit state reset;
- step_size.py: UPGD, IDBD, Autostep and MetaAdam as torch optimizers, the same way;
- groups.py: plain Linear/Conv layers seen as the core's unit groups (replica axis of 1);
- finder.py: find a model's unit groups, or read the user's declaration;
- methods.py: every method of the core's registry built on a plain model (swr.py: SWR's view of it;
  injection.py: the frozen parts of plasticity injection, added to the model's output by hooks);
- torch_api.py: `Plasticity` (any of them by section name) / `attach_cbp` / `attach_redo` / `attach_shrink_perturb`;
- measure.py: `Measure` / `measure`, the core's plasticity metrics per layer of a plain model;
- sb3.py: Stable-Baselines3 policies with the methods in actor and critic (imports SB3, as do the next two);
- sb3_nets.py: which of an SB3 policy's layers make its actor and its critic;
- sb3_callbacks.py: SB3 callbacks logging the metrics (TensorBoard) and making the methods' calls.
"""
