"""The run library every command shares: run directories, checkpoints, TensorBoard logs, progress and
graceful stops, seeds, videos, and the one training loop (`loop.train_loop`) every problem runs in."""
