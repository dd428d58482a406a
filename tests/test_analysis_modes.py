"""Train/eval modes, gradient contexts and evaluation code (mllint.analysis.modes)."""

from __future__ import annotations

import textwrap

import libcst as cst
import pytest

from mllint import Settings
from mllint.analysis.modes import EVAL, INHERIT, TRAIN, UNKNOWN, Modes, is_eval_word, is_train_word
from mllint.core.context import Context


def modes_for(code: str):
    code = textwrap.dedent(code)
    ctx = Context(code, "t.py", cst.parse_module(code), Settings())
    return ctx, ctx.get(Modes)


def call(ctx: Context, text: str, nth: int = 0) -> cst.Call:
    return [c for c in ctx.nodes(cst.Call) if ctx.code(c) == text][nth]


def test_last_mode_call_wins_and_branches_merge() -> None:
    ctx, modes = modes_for("""
        model.eval()
        model.train(mode=True)
        a(model_x)
        if flag:
            model.eval()
        b(model_x)
        model.train(False)
        c(model_x)
        model.train(flag)
        d(model_x)
        """)
    assert modes.mode_at("model", call(ctx, "a(model_x)")).state == TRAIN
    assert modes.mode_at("model", call(ctx, "b(model_x)")).state == UNKNOWN
    assert modes.mode_at("model", call(ctx, "c(model_x)")).state == EVAL
    assert modes.mode_at("model", call(ctx, "d(model_x)")).state == UNKNOWN


def test_loop_body_feeds_back_and_prefixes_apply() -> None:
    ctx, modes = modes_for("""
        def run(model):
            probe(model_x)
            for epoch in range(3):
                top(model_x)
                model.train()
                for x in val_loader:
                    inner(model_x)
                model.encoder.eval()
                after(model_x)
        """)
    assert modes.mode_at("model", call(ctx, "probe(model_x)")).state == INHERIT
    # Top of the epoch body: INHERIT on entry, TRAIN after an iteration.
    assert modes.mode_at("model", call(ctx, "top(model_x)")).state == UNKNOWN
    assert modes.mode_at("model", call(ctx, "inner(model_x)")).state == TRAIN
    assert modes.mode_at("model.encoder", call(ctx, "inner(model_x)")).state == TRAIN
    assert modes.mode_at("model.encoder", call(ctx, "after(model_x)")).state == EVAL
    assert modes.mode_at("model.decoder", call(ctx, "after(model_x)")).state == TRAIN


def test_helpers_one_level_deep_and_unknown_calls() -> None:
    ctx, modes = modes_for("""
        from utils import mystery
        def fit(net, loader):
            net.train()
            for x in loader:
                net(x).backward()
        def to_eval():
            model.eval()
        def nested(net):
            fit(net, None)
        model.eval()
        fit(model, train_loader)
        a(model_x)
        to_eval()
        b(model_x)
        nested(model)
        c(model_x)
        model.eval()
        mystery(model)
        d(model_x)
        print(model)
        e(model_x)
        """)
    mode = modes.mode_at("model", call(ctx, "a(model_x)"))
    assert mode.state == TRAIN and mode.explicit and ctx.code(mode.via) == "fit(model, train_loader)"
    assert modes.mode_at("model", call(ctx, "b(model_x)")).state == EVAL
    # nested() calls another helper: not followed, the passed model becomes unknown.
    assert modes.mode_at("model", call(ctx, "c(model_x)")).state == UNKNOWN
    assert modes.mode_at("model", call(ctx, "d(model_x)")).state == UNKNOWN
    assert modes.mode_at("model", call(ctx, "e(model_x)")).state == UNKNOWN  # print() after mystery()


def test_construction_gives_default_modes() -> None:
    ctx, modes = modes_for("""
        from torch import nn
        from transformers import AutoModel
        class Net(nn.Module):
            pass
        net = Net().to("cuda")
        hf = AutoModel.from_pretrained("bert-base-uncased")
        other = build()
        a(x)
        """)
    at = call(ctx, "a(x)")
    assert modes.mode_at("net", at).state == TRAIN and not modes.mode_at("net", at).explicit
    assert modes.mode_at("hf", at).state == EVAL
    assert modes.mode_at("other", at).state == UNKNOWN
    assert modes.module_value(cst.parse_expression("net"), at)
    assert not modes.module_value(cst.parse_expression("other"), at)


def test_return_paths_and_exit_state() -> None:
    ctx, modes = modes_for("""
        def f(m):
            if cond:
                m.eval()
                return
            m.train()
        def g(m):
            m.eval()
            if cond:
                raise ValueError
        """)
    functions = {f.name.value: f for f in ctx.nodes(cst.FunctionDef)}
    assert modes.exit_state(functions["f"])["m"].state == UNKNOWN
    assert modes.exit_state(functions["g"])["m"].state == EVAL


def test_grad_contexts() -> None:
    ctx, modes = modes_for("""
        import torch
        with torch.no_grad():
            a()
        with torch.set_grad_enabled(phase == "train"):
            b()
        with torch.inference_mode(False):
            c()
        @torch.no_grad
        def f():
            d()
        def helper():
            e()
        with torch.inference_mode():
            helper()
        def g():
            torch.set_grad_enabled(False)
            h()
        k()
        """)
    assert modes.grad_disabled(call(ctx, "a()")) is True
    assert modes.grad_disabled(call(ctx, "b()")) is None
    assert modes.grad_disabled(call(ctx, "c()")) is False
    assert modes.grad_disabled(call(ctx, "d()")) is True
    assert modes.grad_disabled(call(ctx, "e()")) is True
    assert modes.grad_disabled(call(ctx, "h()")) is True
    assert modes.grad_disabled(call(ctx, "k()")) is False


def test_evaluation_code_and_framework_hooks() -> None:
    ctx, modes = modes_for("""
        import lightning as L
        from transformers import Trainer
        for x in dataloaders["val"]:
            a(x)
        for x in train_loader:
            b(x)
        for x in valloader:
            loss.backward()
        def evaluate(model, loader):
            c()
        def test_forward():
            d()
        class Lit(L.LightningModule):
            def validation_step(self, batch, i):
                e()
            def training_step(self, batch, i):
                f()
        class MyTrainer(Trainer):
            def prediction_step(self, model, inputs, only):
                g()
        """)
    assert modes.eval_context(call(ctx, "a(x)")) is not None
    assert modes.eval_context(call(ctx, "b(x)")) is None
    assert modes.eval_context(call(ctx, "loss.backward()")) is None
    assert isinstance(modes.eval_context(call(ctx, "c()")), cst.FunctionDef)
    assert modes.eval_context(call(ctx, "d()")) is None
    assert modes.framework_managed(call(ctx, "e()")) and modes.grad_disabled(call(ctx, "e()"))
    assert not modes.framework_managed(call(ctx, "f()"))
    assert modes.framework_managed(call(ctx, "g()"))


@pytest.mark.parametrize("word, evaluation, train", [
    ("val", True, False), ("testloader", True, False), ("validset", True, False),
    ("trainloader", False, True), ("training", False, True), ("device", False, False),
    ("value", False, False),
])
def test_words(word: str, evaluation: bool, train: bool) -> None:
    assert is_eval_word(word) is evaluation
    assert is_train_word(word) is train


_NET = """
    import torch
    from torch import nn
    import torch.nn.functional as F
    import torchvision
    from collections import OrderedDict
    from mylib import Encoder
    class Plain(nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.hidden = hidden
            self.conv = nn.Conv2d(3, 6, 5)
            self.fc = nn.Linear(hidden, 10)
            self.scale = hidden ** -0.5
            self.weight = nn.Parameter(torch.zeros(hidden))
        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).view(-1, self.hidden))
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Plain(16)
            layers = [nn.Linear(4, 4)]
            layers.append(nn.ReLU())
            self.mlp = nn.Sequential(*layers)
            self.attn = nn.MultiheadAttention(16, 4)
        def forward(self, x):
            return self.mlp(self.inner(x))
    class Dropping(Plain):
        def forward(self, x):
            return F.dropout(super().forward(x), 0.1, self.training)
    class Appends(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList()
            self.blocks.append(nn.BatchNorm1d(4))
    class Given(nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder
        def forward(self, x):
            return self.encoder(x)
    class Imported(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder()
    class Tx(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.a = nn.TransformerEncoderLayer(16, 4, dropout=0.0)
            self.b = nn.LSTM(4, 4, num_layers=2, dropout=p)
    plain = Plain(8)
    plain = plain.to("cuda")
    outer = Outer()
    seq = nn.Sequential(nn.Linear(2, 2), nn.Tanh())
    dropping = Dropping(8)
    appends = Appends()
    given = Given(nn.Linear(2, 2))
    imported = Imported()
    vision = torchvision.models.resnet18()
    tx = Tx(0.0)
    norm = nn.InstanceNorm2d(3, track_running_stats=True)
    seq_drop = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
    loaded = torch.load("model.pt", weights_only=False)
    class Ordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.ReLU())]))
    ordered = Ordered()
    for looped in [plain]:
        pass
    probe()
    """


@pytest.mark.parametrize("name, expected", [
    ("plain", False), ("outer", False), ("seq", False), ("ordered", False), ("loaded", None),
    ("dropping", True), ("appends", True), ("tx", True), ("norm", True), ("seq_drop", True),
    ("given", None), ("imported", None), ("vision", None), ("looped", None), ("unbound", None),
])
def test_mode_dependent(name: str, expected) -> None:
    ctx, modes = modes_for(_NET)
    assert modes.mode_dependent(name, call(ctx, "probe()")) is expected


def test_mode_dependent_self_attribute_and_parameter() -> None:
    ctx, modes = modes_for("""
        from torch import nn
        class Wrapper(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = nn.Sequential(nn.Linear(2, 2))
            def run(self, model):
                a(self.net)
                b(model)
        """)
    assert modes.mode_dependent("self.net", call(ctx, "a(self.net)")) is False
    assert modes.mode_dependent("model", call(ctx, "b(model)")) is None


def test_parameter_updates() -> None:
    ctx, modes = modes_for("""
        import torch
        optimizer.step()
        scaler.step(optimizer)
        engine.backward(loss)
        engine.step()
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-0.1)
            p.grad.add_(p.data, alpha=1e-4)
        with torch.no_grad():
            w -= 0.1 * w.grad
        x.data.add_(0.1 * x.grad.sign())
        image = image + 0.1 * image.grad.sign()
        """)
    updates = [ctx.code(n) for n in modes.parameter_updates()]
    assert updates == ["optimizer.step()", "scaler.step(optimizer)", "engine.step()",
                       "p.data.add_(p.grad, alpha=-0.1)", "w -= 0.1 * w.grad"]


def test_volatile_input() -> None:
    ctx, modes = modes_for("""
        from torch.autograd import Variable
        x, y = Variable(x, volatile=True), Variable(y)
        a(x)
        b(y)
        c(Variable(z.cuda(), volatile=True).cuda())
        """)
    assert modes.volatile_input(call(ctx, "a(x)"))
    assert not modes.volatile_input(call(ctx, "b(y)"))
    assert modes.volatile_input(call(ctx, "c(Variable(z.cuda(), volatile=True).cuda())"))
