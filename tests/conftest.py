import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RL_PLASTICITY_NO_PROGRESS", "1")
