"""The processes of a data-parallel distillation, through accelerate (``accelerate launch -m
zimage_pack.train.cli …``; plain ``zimage-distill`` is one process of it).

How N processes give the training of one process with the same global batch:
- every random number is drawn for the whole global batch from the one seeded generator every process
  holds in the same state; each process takes its contiguous share of the samples;
- the losses are means over equal shares, so the mean of the processes' gradients is the gradient of the
  global batch's loss; it is averaged over the processes before clipping and the optimiser step, so every
  process takes the same step and the adapters and discriminator stay identical everywhere.
What differs is only the order of float additions (the mean over samples, then over processes): the
result matches one process to float32 rounding, growing slowly over steps.

The gradients are averaged here with one all-reduce per parameter group rather than by wrapping the
module in DistributedDataParallel (``accelerator.prepare``): a training step runs the frozen module
several times before one backward (step 1 and step 2 under different adapters, the teacher's features
for the discriminator, which stop part-way through the module), and DDP's reducer expects one forward
per backward with the same parameters used. The trainable parameters are the LoRAs and the
discriminator's heads, small next to the frozen base, so the all-reduce is cheap."""

from __future__ import annotations

import torch


class Processes:
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.rank, self.count = accelerator.process_index, accelerator.num_processes
        self.main = self.rank == 0

    @classmethod
    def start(cls) -> "Processes":
        """This process's place in the run accelerate launched (or the only process)."""
        from accelerate import Accelerator

        return cls(Accelerator(cpu=not torch.cuda.is_available()))

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def share(self, total: int) -> slice:
        """This process's contiguous share of ``total`` samples."""
        if total % self.count:
            raise ValueError(f"the global batch {total} does not divide among {self.count} processes: make --batch a multiple of {self.count}")
        size = total // self.count
        return slice(self.rank * size, (self.rank + 1) * size)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.count == 1:
            return tensor
        return self.accelerator.reduce(tensor.contiguous(), reduction="mean")

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.count == 1:
            return
        with_grad = [p for p in params if p.grad is not None]
        # one buffer, reduced in place (accelerate's reduce would clone it: at real size the adapters'
        # gradients are 0.68 GiB): bench/distill_memory.py --processes traces it per GPU
        flat = torch.cat([p.grad.reshape(-1) for p in with_grad])
        torch.distributed.all_reduce(flat)
        flat /= self.count
        offset = 0
        for p in with_grad:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def same_everywhere(self, tensors: list[torch.Tensor]) -> None:
        """The main process's values on every process (the adapters' and heads' starting values)."""
        if self.count == 1:
            return
        from accelerate.utils import broadcast

        with torch.no_grad():
            for t in tensors:
                t.copy_(broadcast(t.detach().clone().contiguous(), from_process=0))

    def wait(self) -> None:
        if self.count > 1:
            self.accelerator.wait_for_everyone()
