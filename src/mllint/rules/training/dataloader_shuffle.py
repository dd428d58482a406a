from __future__ import annotations

from typing import Iterator, List, Optional

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.instances import Instances
from mllint.analysis.modes import is_eval_word, is_train_word, words
from mllint.analysis.names import dotted
from mllint.analysis.signatures import Signature, bind
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

_DATALOADERS = frozenset({"torch.utils.data.DataLoader", "torch.utils.data.dataloader.DataLoader"})
# torch `utils/data/dataloader.py` (2.13), `DataLoader.__init__`.
_SIGNATURE = Signature(("dataset", "batch_size", "shuffle", "sampler", "batch_sampler", "num_workers",
                        "collate_fn", "pin_memory", "drop_last"), varkw=True)
_MAP_STYLE = ("torch.utils.data.TensorDataset", "torch.utils.data.Subset", "torch.utils.data.dataset.",
              "torchvision.datasets.")
_HF_DATASET_METHODS = frozenset({"map", "filter", "select", "shuffle", "with_format", "remove_columns",
                                 "rename_column", "rename_columns", "cast_column", "set_format",
                                 "train_test_split", "flatten"})
# Calls that draw random data: a dataset built from them has no meaningful order.
_RANDOM = ("torch.rand", "torch.randn", "torch.randint", "torch.normal", "numpy.random.", "random.")


class DataloaderShuffle(Rule):
    """## What it does
    Checks for a training `DataLoader` over a map-style dataset without `shuffle=True` (nor a
    `sampler=`/`batch_sampler=`), and for `shuffle=True` on a validation/test `DataLoader`.

    A loader is a training loader when its name or its dataset's name says so (`train_loader`,
    `trainloader`, `DataLoader(train_ds, ...)`) or it is returned by a `train_dataloader`
    method; an evaluation loader when they say `val`/`valid`/`test`/`eval`/`dev`. The dataset must
    be known to be map-style: `TensorDataset`, `Subset`, a `torchvision.datasets` class, a
    `Dataset` subclass of the file (not an `IterableDataset`), a list, or a split of a Hugging
    Face `load_dataset(...)` without `streaming=True`. Iterable datasets cannot be shuffled by the
    loader (it raises), so an unknown dataset keeps the rule silent, as do `**kwargs` and an
    explicit `shuffle=False` on a training loader (often deliberate, e.g. for time series).

    ## Why is this bad?
    Without `shuffle`, `DataLoader` uses a `SequentialSampler` (torch `utils/data/dataloader.py`,
    `DataLoader.__init__`: `RandomSampler` only `if shuffle`), so every epoch sees the batches in
    the same order, often sorted by class or source. SGD then follows the order of the file, and
    the loss curve looks fine while the model generalises worse. Shuffling a validation or test
    loader does not change the metrics, but makes per-batch logs and saved predictions
    irreproducible and misaligned with the dataset's order; Lightning warns about it
    ("Your `val_dataloader`'s sampler has shuffling enabled, it is strongly recommended that you
    turn shuffling off for val/test dataloaders", `trainer/connectors/data_connector.py`,
    `_process_dataloader`, lightning 2.6.6).

    ## Example
    ```python
    train_loader = DataLoader(train_ds, batch_size=64)
    val_loader = DataLoader(val_ds, batch_size=64, shuffle=True)
    ```

    ## Use instead
    ```python
    train_loader = DataLoader(train_ds, batch_size=64, shuffle=True)
    val_loader = DataLoader(val_ds, batch_size=64)
    ```

    ## Fix safety
    There is no fix: shuffling changes the training run, and an explicit sampler may be wanted.

    ## References
    - torch `utils/data/dataloader.py`, `DataLoader.__init__`
    - torch `utils/data/sampler.py`, `RandomSampler`, `SequentialSampler`
    - lightning `pytorch/trainer/connectors/data_connector.py`, `_process_dataloader`
    """

    code = "MLL410"
    name = "dataloader-shuffle"
    summary = "training `DataLoader` without `shuffle=True`, or an evaluation loader with it"
    severity = Severity.INFO
    default_enabled = False
    tags = ("training", "torch", "data")
    triggers = (("DataLoader",),)
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (("import:torch & name:DataLoader",),)
    premise = {"torch": ">=1.0"}
    VALID = (
        # A one-batch subset (a smoke test / overfit-one-batch check): the order cannot matter.
        Valid("""
            from torch.utils.data import DataLoader, Subset
            tiny_train = Subset(full_train_set, range(4))
            overfit_train_loader = DataLoader(tiny_train, batch_size=4)
            """),
        # Random samples (a smoke-test dataset): their order carries nothing a shuffle could change.
        Valid("""
            import torch
            from torch.utils.data import DataLoader, Dataset
            class RandomPoints(Dataset):
                def __init__(self, size, length):
                    self.data = torch.randn(length, size)
                def __len__(self):
                    return len(self.data)
                def __getitem__(self, index):
                    return self.data[index]
            train_loader = DataLoader(RandomPoints(32, 64), batch_size=2)
            for x in train_loader:
                model(x).sum().backward()
            """),
        Valid("""
            from torch.utils.data import DataLoader, TensorDataset
            train_ds = TensorDataset(x, y)
            train_loader = DataLoader(train_ds, batch_size=32, shuffle=True)
            val_loader = DataLoader(TensorDataset(vx, vy), batch_size=32)
            """),
        # A sampler does the shuffling (distributed training).
        Valid("""
            from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
            train_ds = TensorDataset(x, y)
            train_loader = DataLoader(train_ds, batch_size=32, sampler=DistributedSampler(train_ds))
            """),
        # An iterable dataset cannot be shuffled by the loader.
        Valid("""
            from torch.utils.data import DataLoader, IterableDataset
            class Stream(IterableDataset):
                def __iter__(self):
                    yield from range(10)
            train_loader = DataLoader(Stream(), batch_size=4)
            """),
        # Unknown dataset (a datapipe from another library).
        Valid("""
            from torch.utils.data import DataLoader
            from torchtext.datasets import Multi30k
            train_iter = Multi30k(split="train")
            train_dataloader = DataLoader(train_iter, batch_size=128, collate_fn=collate_fn)
            """),
        # Streaming Hugging Face datasets are iterable.
        Valid("""
            from datasets import load_dataset
            from torch.utils.data import DataLoader
            ds = load_dataset("c4", "en", streaming=True)
            train_loader = DataLoader(ds["train"], batch_size=8)
            """),
        # Explicit shuffle=False on training data is deliberate.
        Valid("""
            from torch.utils.data import DataLoader, TensorDataset
            train_loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)
            """),
        # Splatted options may carry shuffle.
        Valid("""
            from torch.utils.data import DataLoader, TensorDataset
            train_loader = DataLoader(TensorDataset(x, y), **loader_kwargs)
            """),
    )
    INVALID = (
        Invalid(
            """
            from torch.utils.data import DataLoader
            from torchvision import datasets
            train_set = datasets.MNIST("data", train=True, download=True)
            train_loader = DataLoader(train_set, batch_size=64)
            """,
            line=4,
            message="training `DataLoader` `train_loader` over map-style `train_set` has no `shuffle=True`",
        ),
        Invalid(
            """
            from torch.utils.data import DataLoader, TensorDataset
            test_loader = DataLoader(TensorDataset(tx, ty), batch_size=256, shuffle=True)
            """,
            line=2,
            message="`shuffle=True` on evaluation `DataLoader` `test_loader`",
        ),
        # A Dataset subclass of the file, returned by Lightning's train_dataloader hook.
        Invalid(
            """
            import lightning as L
            from torch.utils.data import DataLoader, Dataset
            class Pairs(Dataset):
                def __len__(self):
                    return 10
                def __getitem__(self, i):
                    return i
            class Data(L.LightningDataModule):
                def train_dataloader(self):
                    return DataLoader(Pairs(), batch_size=8, num_workers=2)
            """,
            line=10,
        ),
        # A split of a Hugging Face dataset, after map().
        Invalid(
            """
            from datasets import load_dataset
            from torch.utils.data import DataLoader
            raw = load_dataset("imdb")
            tokenized = raw.map(tokenize, batched=True)
            train_dataloader = DataLoader(tokenized["train"], batch_size=16, collate_fn=collator)
            """,
            line=5,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        for call in ctx.nodes(cst.Call):
            if not ctx.names.resolve(call.func) & _DATALOADERS:
                continue
            binding = bind(call, _SIGNATURE)
            dataset = binding.value("dataset")
            if dataset is None:
                continue
            label = self._label(ctx, call)
            spelled = ctx.code(dataset) if isinstance(dataset, cst.Subscript) else dotted(dataset)
            names = words(label or "") + words(spelled or "")
            train = any(is_train_word(w) for w in names) or self._in_method(ctx, call, "train_dataloader")
            evaluation = any(is_eval_word(w) for w in names) or any(
                self._in_method(ctx, call, m) for m in ("val_dataloader", "test_dataloader"))
            shuffle = binding.value("shuffle")
            loader = f"`{label}`" if label else f"`{ctx.code(call.func)}(...)`"
            if train and not evaluation:
                if binding.opaque or shuffle is not None or binding.passed("sampler") \
                        or binding.passed("batch_sampler") or not self._map_style(ctx, dataset, call) \
                        or self._single_batch(ctx, dataset, binding.value("batch_size")):
                    continue
                yield ctx.report(
                    call,
                    f"training `DataLoader` {loader} over map-style `{ctx.code(dataset)}` has no "
                    f"`shuffle=True`: it uses a `SequentialSampler`, so every epoch sees the batches in "
                    f"the same order",
                )
            elif evaluation and not train and isinstance(shuffle, cst.Name) and shuffle.value == "True":
                yield ctx.report(
                    shuffle,
                    f"`shuffle=True` on evaluation `DataLoader` {loader}: metrics do not change, but "
                    f"per-batch outputs no longer line up with the dataset's order between runs",
                )

    @staticmethod
    def _single_batch(ctx: Context, dataset: cst.BaseExpression, batch_size: Optional[cst.BaseExpression]) -> bool:
        """``Subset(ds, range(N))`` (or ``[0, ..]`` indices) with a literal ``batch_size >= N``:
        every epoch is the same single batch, so the sample order cannot matter."""
        if not (isinstance(batch_size, cst.Integer)):
            return False
        if isinstance(dataset, cst.Name):
            dataset = ctx.get(Assignments).reaching(dataset) or dataset
        if not (isinstance(dataset, cst.Call) and ctx.names.resolve(dataset.func) & {"torch.utils.data.Subset",
                                                                                 "torch.utils.data.dataset.Subset"}
                and len(dataset.args) >= 2 and dataset.args[1].keyword in (None,)):
            return False
        indices = dataset.args[1].value
        if isinstance(indices, (cst.List, cst.Tuple)):
            count = len(indices.elements)
        elif isinstance(indices, cst.Call) and isinstance(indices.func, cst.Name) and indices.func.value == "range" \
                and len(indices.args) == 1 and isinstance(indices.args[0].value, cst.Integer):
            count = int(indices.args[0].value.evaluated_value)
        else:
            return False
        return count <= int(batch_size.evaluated_value)

    @staticmethod
    def _label(ctx: Context, call: cst.Call) -> Optional[str]:
        parent = ctx.parent(call)
        if isinstance(parent, cst.Assign) and len(parent.targets) == 1:
            return dotted(parent.targets[0].target)
        if isinstance(parent, cst.AnnAssign):
            return dotted(parent.target)
        return None

    @staticmethod
    def _in_method(ctx: Context, call: cst.Call, name: str) -> bool:
        function = ctx.enclosing(call, cst.FunctionDef)
        return function is not None and function.name.value == name

    def _map_style(self, ctx: Context, dataset: cst.BaseExpression, at: cst.CSTNode,
                   depth: int = 0) -> bool:
        if depth > 4:
            return False
        if isinstance(dataset, (cst.List, cst.ListComp)):
            return True
        if isinstance(dataset, cst.Subscript):
            return self._hf_dataset(ctx, dataset.value, at, depth)
        if isinstance(dataset, cst.Name):
            values: List[cst.BaseExpression] = ctx.get(Instances).values(dataset.value, at)
            function = ctx.enclosing(at, cst.FunctionDef)
            if not values or function is not None and dataset.value in [
                    p.name.value for p in function.params.params]:
                return False
            return all(self._map_style(ctx, v, v, depth + 1) for v in values)
        if isinstance(dataset, cst.Call):
            func = dataset.func
            if isinstance(func, cst.Name):
                local = [c for c in ctx.nodes(cst.ClassDef) if c.name.value == func.value]
                if local:
                    return len(local) == 1 and self._dataset_class(ctx, local[0])
            names = ctx.names.resolve(func)
            return bool(names) and all(n.startswith(_MAP_STYLE) and "Iterable" not in n for n in names)
        return False

    def _hf_dataset(self, ctx: Context, expr: cst.BaseExpression, at: cst.CSTNode, depth: int) -> bool:
        """A `DatasetDict` from `load_dataset(...)` without streaming (through `.map()` & co.)."""
        while isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) \
                and expr.func.attr.value in _HF_DATASET_METHODS:
            expr = expr.func.value
        if isinstance(expr, cst.Call):
            if not ctx.names.matches(expr.func, "datasets.load_dataset"):
                return False
            return not any(a.keyword is not None and a.keyword.value == "streaming"
                           and not (isinstance(a.value, cst.Name) and a.value.value == "False")
                           for a in expr.args) and not any(a.star for a in expr.args)
        if isinstance(expr, cst.Name) and depth <= 4:
            values = ctx.get(Instances).values(expr.value, at)
            return bool(values) and all(self._hf_dataset(ctx, v, v, depth + 1) for v in values)
        return False

    @staticmethod
    def _dataset_class(ctx: Context, cls: cst.ClassDef) -> bool:
        """A local map-style ``Dataset`` subclass whose items are not random draws (the order of
        random samples carries nothing a shuffle could change)."""
        names = set()
        for base in cls.bases:
            names |= ctx.names.resolve(base.value)
        if not names or not all(n in ("torch.utils.data.Dataset", "torch.utils.data.dataset.Dataset")
                                for n in names):
            return False
        return not any(cls in ctx.ancestors(call) and any(n.startswith(_RANDOM) for n in ctx.names.resolve(call.func))
                       for call in ctx.nodes(cst.Call))
