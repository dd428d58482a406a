from __future__ import annotations

from typing import Iterator, Optional

import libcst as cst

from mllint.analysis.modes import Modes, is_training_step
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

# `*seed*` calls that do not seed torch (or do not seed deterministically).
_NOT_TORCH_SEEDS = frozenset({"random.seed", "numpy.random.seed", "torch.seed", "torch.initial_seed",
                              "torch.cuda.seed", "torch.cuda.seed_all", "tensorflow.random.set_seed"})
_TORCH_STACK = ("torch", "lightning", "pytorch_lightning", "transformers", "peft", "accelerate")
_LIGHTNING_TRAINERS = frozenset({"lightning.pytorch.Trainer", "lightning.pytorch.trainer.Trainer",
                                 "lightning.Trainer", "lightning.pytorch.trainer.trainer.Trainer"})


class UncontrolledRandomness(Rule):
    """## What it does
    Checks for a training script (a file whose top-level code updates parameters: an optimizer
    step (`opt.step()`, `scaler.step(opt)`, `xm.optimizer_step(opt)`, a DeepSpeed engine's
    `step()`), an update by hand from gradients (`p.data.add_(p.grad, alpha=-lr)`,
    `w -= lr * w.grad` under `torch.no_grad()`) or a Lightning `Trainer.fit`, directly or through
    functions of the file it calls, e.g. from an `if __name__ == "__main__":` block) that never
    seeds torch: no `torch.manual_seed`, `torch.cuda.manual_seed_all`, Lightning's
    `seed_everything`, `transformers.set_seed`/`accelerate.utils.set_seed`, or any other call named
    `*seed*` (a project's own `set_seed` helper counts) anywhere in the module. Seeding only
    `random` or `numpy` does not count. Modules that build a Hugging Face or trl `Trainer` are left
    alone: it seeds itself. Library modules (training functions nobody in the file calls) are
    never reported, nor are files whose backward passes only compute input gradients (adversarial
    examples, saliency maps) with no parameter update.

    This is dslinter's `randomness-control-pytorch` (W5511), restricted to files that train.

    ## Why is this bad?
    Weight initialisation, dropout masks, `DataLoader(shuffle=True)` (a `RandomSampler` drawing
    from torch's default generator, torch `utils/data/sampler.py`) and random augmentations all
    draw from torch's global generator, which is seeded differently in every process. Two runs of
    the same script give different curves and metrics, so a change cannot be told from noise and
    a bug cannot be reproduced. Lightning does not seed unless asked
    (`lightning.fabric.utilities.seed.seed_everything`, lightning 2.6.6); the Hugging Face
    `Trainer` does (`Trainer.__init__` calls `set_seed(self.args.seed)`, transformers 5.23).

    ## Example
    ```python
    model = Net()
    for x, y in train_loader:
        loss_fn(model(x), y).backward()
        optimizer.step()
    ```

    ## Use instead
    ```python
    torch.manual_seed(0)
    model = Net()
    ```
    or `lightning.seed_everything(0, workers=True)`.

    ## Fix safety
    There is no fix: the seed and where to set it (before the model is built) are the user's.

    ## References
    - torch `random.py`, `manual_seed`; https://pytorch.org/docs/stable/notes/randomness.html
    - lightning `fabric/utilities/seed.py`, `seed_everything`
    - transformers `trainer.py`, `Trainer.__init__`; `trainer_utils.py`, `set_seed`
    - dslinter W5511 `randomness-control-pytorch`
    """

    code = "MLL411"
    name = "uncontrolled-randomness"
    summary = "training script that never seeds torch's random number generator"
    severity = Severity.INFO
    default_enabled = False
    tags = ("reproducibility", "torch", "training")
    triggers = (("torch", "lightning", "transformers", "peft", "accelerate"), ("backward", "step", "fit"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (("import:torch", "import:lightning", "import:pytorch_lightning", "import:transformers",
                 "import:peft", "import:accelerate"),
                ("call:backward", "call:manual_backward", "call:step", "call:fit"))
    premise = {"torch": ">=1.0"}
    VALID = (
        Valid("""
            import torch
            torch.manual_seed(0)
            for x, y in train_loader:
                loss_fn(model(x), y).backward()
                optimizer.step()
            """),
        # A project helper named *seed*, called in main().
        Valid("""
            import torch
            from utils import fix_seeds
            def main():
                fix_seeds(42)
                for x, y in train_loader:
                    loss_fn(model(x), y).backward()
            if __name__ == "__main__":
                main()
            """),
        Valid("""
            import lightning as L
            L.seed_everything(7)
            trainer = L.Trainer(max_epochs=3)
            trainer.fit(model, dm)
            """),
        # The Hugging Face Trainer seeds itself.
        Valid("""
            import torch
            from transformers import Trainer
            trainer = Trainer(model=model, args=args, train_dataset=ds)
            trainer.train()
            loss.backward()
            """),
        # A library module: definitions only.
        Valid("""
            import torch
            def train_step(model, batch, optimizer):
                loss = model(**batch).loss
                loss.backward()
                optimizer.step()
            """),
        # Gradients with respect to the input of a loaded model (an adversarial attack): no
        # parameter is updated, so nothing is trained.
        Valid("""
            import torch
            import torch.nn.functional as F
            net = Classifier()
            net.load_state_dict(torch.load("clf.pt", weights_only=True))
            net.eval()
            for image, label in test_loader:
                image.requires_grad = True
                loss = F.cross_entropy(net(image), label)
                net.zero_grad()
                loss.backward()
                adversarial = (image + 0.05 * image.grad.sign()).clamp(0, 1)
                print(net(adversarial).argmax(1) == label)
            """),
        # No training at all.
        Valid("""
            import torch
            model = torch.load("m.pt")
            print(model(torch.ones(3)))
            """),
    )
    INVALID = (
        # Plain SGD by hand (the nn tutorial's shape).
        Invalid(
            """
            import torch
            weights = torch.randn(784, 10, requires_grad=True)
            for xb, yb in batches:
                loss = loss_func(xb @ weights, yb)
                loss.backward()
                with torch.no_grad():
                    weights -= weights.grad * 0.5
                    weights.grad.zero_()
            """,
            line=5,
            message="`loss.backward(...)`",
        ),
        Invalid(
            """
            import torch
            for batch in loader:
                model.zero_grad()
                model(batch).backward()
                for p in model.parameters():
                    p.data.add_(p.grad, alpha=-0.1)
            """,
            line=4,
        ),
        Invalid(
            """
            import random
            import numpy as np
            import torch
            random.seed(0)
            np.random.seed(0)
            for x, y in train_loader:
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
            """,
            line=8,
            message="never seeds torch",
        ),
        Invalid(
            """
            import pytorch_lightning as pl
            def main():
                trainer = pl.Trainer(max_epochs=5)
                trainer.fit(LitModel(), datamodule=dm)
            if __name__ == "__main__":
                main()
            """,
            line=4,
            message="`trainer.fit(...)`",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        if not any(ctx.names.imports(p) for p in _TORCH_STACK):
            return
        first: Optional[cst.Call] = None
        for call in ctx.nodes(cst.Call):
            names = ctx.names.resolve(call.func)
            if any(n.startswith(("transformers.", "trl.")) and n.endswith("Trainer") for n in names):
                return
            last = call.func.attr.value if isinstance(call.func, cst.Attribute) else (
                call.func.value if isinstance(call.func, cst.Name) else "")
            if "seed" in last.lower() and not names & _NOT_TORCH_SEEDS:
                return
            if first is None and (is_training_step(call) or self._fit(ctx, call)):
                first = call
        if first is None or not self._runs(ctx, first):
            return
        if not self._fit(ctx, first) and not any(self._runs(ctx, u) for u in ctx.get(Modes).parameter_updates()):
            return  # backward passes only (input gradients, saliency): nothing is trained
        yield ctx.report(
            first,
            f"this script trains (`{ctx.code(first.func)}(...)`) but never seeds torch (no "
            f"`torch.manual_seed`, `seed_everything` or `set_seed` in the module): weight init, "
            f"dropout and shuffling differ on every run, so results cannot be reproduced",
        )

    @staticmethod
    def _fit(ctx: Context, call: cst.Call) -> bool:
        if not (isinstance(call.func, cst.Attribute) and call.func.attr.value == "fit"):
            return False
        for made in ctx.nodes(cst.Call):
            if ctx.names.resolve(made.func) & _LIGHTNING_TRAINERS:
                return True
        return False

    @staticmethod
    def _runs(ctx: Context, call: cst.Call) -> bool:
        """Whether ``call`` runs when the file is executed: it is top-level code, or inside a
        function the top-level code calls (directly or through other functions of the file)."""
        def outermost(node: cst.CSTNode) -> Optional[cst.FunctionDef]:
            found = None
            for ancestor in ctx.ancestors(node):
                if isinstance(ancestor, cst.FunctionDef):
                    found = ancestor
            return found

        home = outermost(call)
        if home is None:
            return True
        reached = {None}
        names: set = set()
        changed = True
        while changed:
            changed = False
            for other in ctx.nodes(cst.Call):
                if isinstance(other.func, cst.Name) and other.func.value not in names \
                        and outermost(other) in reached:
                    names.add(other.func.value)
                    changed = True
            for function in ctx.nodes(cst.FunctionDef):
                if function.name.value in names and function not in reached:
                    reached.add(function)
                    changed = True
        return home in reached
