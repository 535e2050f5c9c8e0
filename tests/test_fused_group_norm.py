"""The fused NHWC GroupNorm(+add, +SiLU) custom ops against a float64 reference and torch, opcheck/compile, the UNet's fused path, and CUDA (skip without GPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qmia_fast.kernels import group_norm as FO
from qmia_fast import kernels as K
from qmia_fast.kernels import reference as R
from qmia_fast.errors import ConfigError, InputError
from qmia_fast.models.unet import UNet
from model_helpers import STORAGE_DTYPES

DTYPES = STORAGE_DTYPES
# (shape, groups): the UNet's 32 groups, C not a multiple of 8, H*W = 1 with groups = C,
# groups = 1, one channel per group, an empty batch.
SHAPES = [((2, 64, 5, 7), 32), ((3, 12, 4, 3), 3), ((2, 6, 1, 1), 6), ((1, 5, 9, 3), 1), ((2, 32, 6, 6), 32),
          ((0, 32, 4, 4), 32)]
SHAPE_IDS = ["C64g32", "C12g3", "hw1-g=C", "g1", "C32g32", "empty"]
ADDS = ["none", "full", "per_channel", "per_channel_4d"]

# Tolerances against the float64 reference (outputs are O(1)): float32 is a few ulp of the
# float32 scale/shift arithmetic and of the SiLU's exp; bfloat16 and float16 are their own
# rounding of the output (2^-9 and 2^-12 relative) plus that.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=8e-3, atol=8e-3),
       torch.float16: dict(rtol=1e-3, atol=1e-3)}


def _inputs(shape, dtype, add_kind, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
    add = {"none": None, "full": torch.randn(shape, generator=g).to(dtype),
           "per_channel": torch.randn(n, c, generator=g).to(dtype),
           "per_channel_4d": torch.randn(n, c, 1, 1, generator=g).to(dtype)}[add_kind]
    weight, bias = torch.randn(c, generator=g) * 0.5 + 1, torch.randn(c, generator=g)
    move = (lambda t: None if t is None else t.to(device))
    return move(x), move(add), move(weight), move(bias)


def _close(got, want, dtype):
    torch.testing.assert_close(got.double().cpu(), want.double().cpu(), **TOL[dtype])


@pytest.mark.parametrize("silu", [False, True], ids=["gn", "gn_silu"])
@pytest.mark.parametrize("add_kind", ADDS)
@pytest.mark.parametrize("shape,groups", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_the_float64_reference(dtype, shape, groups, add_kind, silu):
    x, add, weight, bias = _inputs(shape, dtype, add_kind, seed=shape[1])
    y = FO.group_norm_act(x, groups, weight, bias, 1e-5, silu=silu, add=add)
    want, want_sum = R.group_norm_act_reference(x, groups, weight, bias, 1e-5, silu, add)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous(memory_format=torch.channels_last)
    _close(y, want, dtype)
    if add is not None:
        y2, total = FO.group_norm_act(x, groups, weight, bias, 1e-5, silu=silu, add=add, return_sum=True)
        assert torch.equal(y2, y)
        # The sum is x + add formed in float32 and rounded once to x's dtype.
        assert total.dtype == dtype and torch.equal(total, want_sum.to(dtype))


def test_groups_far_from_zero_and_constant_groups_keep_their_precision():
    # The mean is subtracted before scaling: no |mean| / std ulp are lost, and a constant
    # group gives beta exactly (eps keeps 1 / std finite).
    x, add, weight, bias = _inputs((2, 16, 6, 6), torch.float32, "per_channel", seed=11)
    far = x + 1000.0
    y = FO.group_norm_act(far, 4, weight, bias, silu=True, add=add)
    _close(y, R.group_norm_act_reference(far, 4, weight, bias, 1e-5, True, add)[0], torch.float32)
    constant = torch.full((2, 16, 3, 3), 7.25).contiguous(memory_format=torch.channels_last)
    assert torch.equal(FO.group_norm_act(constant, 4, weight, bias), bias.reshape(1, 16, 1, 1).expand(2, 16, 3, 3))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_agrees_with_torch_group_norm_of_the_upcast_input(dtype):
    # What torch computes under autocast (GroupNorm in float32), rounded to the output dtype.
    x, add, weight, bias = _inputs((4, 128, 8, 8), dtype, "per_channel", seed=1)
    y = FO.group_norm_act(x, 32, weight, bias, 1e-6, silu=True, add=add)
    torch_y = F.silu(F.group_norm(x.float() + add.float()[:, :, None, None], 32, weight, bias, 1e-6))
    _close(y, torch_y, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_parameters_in_the_data_dtype_or_another(dtype):
    x, add, weight, bias = _inputs((2, 16, 3, 5), dtype, "full", seed=2)
    want, _ = R.group_norm_act_reference(x, 4, weight.to(dtype), bias.to(dtype), 1e-5, True, add)
    for w, b in ((weight.to(dtype), bias.to(dtype)), (weight.to(dtype).double(), bias.to(dtype).float()),
                 (weight.to(dtype).float(), bias.to(dtype))):
        _close(FO.group_norm_act(x, 4, w, b, silu=True, add=add), want, dtype)
    plain, _ = R.group_norm_act_reference(x, 4, None, None, 1e-5, False, add)
    _close(FO.group_norm_act(x, 4, add=add), plain, dtype)


def test_any_layout_is_copied_to_channels_last_with_the_same_result():
    x, add, weight, bias = _inputs((3, 16, 6, 5), torch.float32, "full", seed=3)
    want = FO.group_norm_act(x, 8, weight, bias, silu=True, add=add)
    big = torch.randn(3, 16, 6, 10)
    big[..., ::2] = x
    for x_view, add_view in ((x.contiguous(), add.contiguous()),           # NCHW
                             (big[..., ::2], add.contiguous(memory_format=torch.channels_last)),  # strided slice
                             (x.permute(0, 1, 3, 2).transpose(2, 3), add.expand_as(add))):  # permuted view
        got = FO.group_norm_act(x_view, 8, weight, bias, silu=True, add=add_view)
        assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, want)
    # An expanded per-channel add (stride 0) is read as [N, C].
    temb = torch.randn(1, 16).expand(3, 16)
    torch.testing.assert_close(FO.group_norm_act(x, 8, add=temb),
                               FO.group_norm_act(x, 8, add=temb.contiguous()), rtol=0, atol=0)


def test_the_fp32_fast_layer_route_is_the_same_kernel():
    from qmia_fast.kernels import winograd as fastconv

    x, _, weight, bias = _inputs((2, 32, 7, 7), torch.float32, "none", seed=4)
    assert torch.equal(fastconv.group_norm_nhwc(x, 32, weight, bias, 1e-6, silu=True),
                       FO.group_norm_act(x, 32, weight, bias, 1e-6, silu=True))


X = torch.randn(2, 8, 3, 3)
BAD_CALLS = [
    (lambda: FO.group_norm_act(X, 3), ["groups", "divide", "8 channels"]),
    (lambda: FO.group_norm_act(X, 0), ["groups", "positive"]),
    (lambda: FO.group_norm_act(X, 2.0), ["groups"]),
    (lambda: FO.group_norm_act(X[0], 2), ["x", "N x C x H x W"]),
    (lambda: FO.group_norm_act(X.double(), 2), ["x", "float64", ".float()"]),
    (lambda: FO.group_norm_act(X.int(), 2), ["x", "int32"]),
    (lambda: FO.group_norm_act(X.numpy(), 2), ["x", "torch.Tensor"]),
    (lambda: FO.group_norm_act(X, 2, eps=float("nan")), ["eps", "finite"]),
    (lambda: FO.group_norm_act(X, 2, eps=-1.0), ["eps"]),
    (lambda: FO.group_norm_act(X, 2, torch.ones(7)), ["weight", "(8,)"]),
    (lambda: FO.group_norm_act(X, 2, None, torch.ones(8, dtype=torch.int64)), ["bias", "floating"]),
    (lambda: FO.group_norm_act(X, 2, add=torch.ones(2, 8, 3)), ["add", "shape", "[N, C]"]),
    (lambda: FO.group_norm_act(X, 2, add=torch.ones(2, 8).half()), ["add", "float16", "add.to(torch.float32)"]),
    (lambda: FO.group_norm_act(X, 2, add=torch.ones(2, 8, device="meta")), ["add", "meta", "add.to('cpu')"]),
    (lambda: FO.group_norm_act(X, 2, return_sum=True), ["return_sum", "add"]),
]


@pytest.mark.parametrize("call,words", BAD_CALLS, ids=[f"case{i}" for i in range(len(BAD_CALLS))])
def test_bad_arguments_raise_a_clear_input_error(call, words):
    with pytest.raises(InputError) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} missing from {info.value}"


def test_meta_tensors_get_the_output_shape():
    y = FO.group_norm_act(X.to("meta"), 2, add=torch.ones(2, 8, device="meta"))
    assert y.device.type == "meta" and y.shape == X.shape and y.is_contiguous(memory_format=torch.channels_last)


def test_the_registered_op_checks_too_and_the_core_checks_again():
    with pytest.raises(InputError, match="divide"):
        torch.ops.qmia_fast.group_norm_act(X, None, None, None, 3, 1e-5, False)
    core = K.dispatch._cpu
    out = torch.empty(8)
    with pytest.raises(ValueError, match="null pointer"):  # x missing
        core.group_norm_act(0, 0, 0, 0, 0, 0, out.data_ptr(), 0, 0, 1, 2, 4, 2, 1e-5, 0)
    with pytest.raises(ValueError, match="add_kind"):
        core.group_norm_act(out.data_ptr(), 0, 7, 0, 0, 0, out.data_ptr(), 0, 0, 1, 2, 4, 2, 1e-5, 0)
    with pytest.raises(ValueError, match="gamma/beta dtype"):
        core.group_norm_act(out.data_ptr(), 0, 0, 0, 0, 2, out.data_ptr(), 0, 1, 1, 2, 4, 2, 1e-5, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(dtype):
    x, add, weight, bias = _inputs((2, 16, 3, 4), dtype, "per_channel", seed=5)
    full = torch.randn(x.shape).to(dtype)
    torch.library.opcheck(torch.ops.qmia_fast.group_norm_act.default, (x, add, weight, bias, 4, 1e-5, True))
    torch.library.opcheck(torch.ops.qmia_fast.group_norm_act.default, (x.contiguous(), None, None, None, 16, 1e-6,
                                                                       False))
    torch.library.opcheck(torch.ops.qmia_fast.add_group_norm_act.default, (x, full, weight, bias, 2, 1e-5, False))


def test_compiles_without_graph_breaks():
    # aot_eager runs the fake implementation and the real kernel without a compiler toolchain.
    x, add, weight, bias = _inputs((2, 32, 5, 5), torch.float32, "per_channel", seed=6)

    def block(x, add):
        y, total = FO.group_norm_act(x * 2, 8, weight, bias, silu=True, add=add[:, :, None, None].expand(
            -1, -1, 5, 5), return_sum=True)
        return y + total

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x, add), block(x, add))


@pytest.mark.slow
def test_compiles_with_inductor():
    x, add, weight, bias = _inputs((2, 32, 5, 5), torch.float32, "full", seed=7)
    compiled = torch.compile(lambda x, a: FO.group_norm_act(x + 1, 8, weight, bias, silu=True, add=a) * 3,
                             fullgraph=True)
    torch.testing.assert_close(compiled(x, add), FO.group_norm_act(x + 1, 8, weight, bias, silu=True, add=add) * 3,
                               rtol=0, atol=0)


# ---- the UNet's fused path ------------------------------------------------------------------------

def _small_unet(seed=0):
    torch.manual_seed(seed)
    model = UNet(T=1000, ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.1, in_ch=3, img_size=8).eval()
    with torch.no_grad():  # away from DDPM's near-zero initialisation of the residual branches
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _unet_inputs(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 1000, (n,), generator=g)


def _rel(a, ref):
    return ((a.double() - ref).norm() / ref.norm()).item()


def _plain_and_fused(model, x, t, run):
    """The plain path's float64 output, and {fused: run(model)} with the fused path off and on (no gradients)."""
    with torch.no_grad():
        exact = model.double().set_fused(False)(x.double(), t)
        model.float()
        outs = {}
        for fused in (False, True):
            model.set_fused(fused)
            outs[fused] = run(model)
    return exact, outs


def test_unet_fused_path_equals_the_plain_path_at_fp32():
    model = _small_unet()
    x, t = _unet_inputs()
    with torch.no_grad():
        plain = model.set_fused(False)(x, t)
        fused = model.set_fused(True)(x, t)
        exact = model.double().set_fused(False)(x.double(), t)
    # Both are float32 evaluations of the same network: each ~1e-6 from float64.
    assert _rel(fused, exact) < 1e-5 and _rel(plain, exact) < 1e-5
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
    assert fused.is_contiguous(memory_format=torch.channels_last)


def test_unet_parameter_names_and_default_switch():
    model = _small_unet()
    assert model.fused is None and "fused" not in "".join(model.state_dict())
    x, t = _unet_inputs()
    with torch.no_grad():
        # None: the device decides for channels_last models (CPU: fused); NCHW models stay plain.
        assert torch.equal(model(x, t), model.set_fused(False)(x, t))
        model.set_fused(None).to(memory_format=torch.channels_last)
        assert torch.equal(model(x, t), model.set_fused(True)(x, t))
    with pytest.raises(ConfigError, match="fused"):
        model.set_fused("yes")


def test_unet_keeps_torch_layers_when_gradients_are_needed():
    model = _small_unet().set_fused(True)
    x, t = _unet_inputs()
    x.requires_grad_(True)
    out = model(x, t)  # the fused ops have no backward: the plain path must have run
    out.sum().backward()
    assert x.grad is not None and model.tail[0].weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("how", ["autocast", "cast"])
def test_unet_fused_path_in_half_precision(dtype, how):
    # Against float64: the fused path's error is the half-precision network's own error.
    x, t = _unet_inputs()

    def run(net):
        if how == "autocast":
            with torch.autocast("cpu", dtype=dtype):
                return net(x, t)
        out = net.to(dtype)(x.to(dtype), t)
        net.float()
        return out

    exact, outs = _plain_and_fused(_small_unet(), x, t, run)
    errors = {fused: _rel(out, exact) for fused, out in outs.items()}
    bound = 2e-2 if dtype == torch.bfloat16 else 3e-3
    assert errors[True] < bound and errors[False] < bound
    assert errors[True] < 2 * errors[False] + 1e-4


@pytest.mark.slow
def test_unet_fused_path_compiles():
    model = _small_unet().set_fused(True)
    x, t = _unet_inputs()
    with torch.no_grad():
        want = model(x, t)
        got = torch.compile(model, fullgraph=True, backend="aot_eager")(x, t)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ---- CUDA (skipped without a GPU) -------------------------------------------------------------

cuda = pytest.mark.cuda


def _poison_cuda_cache(nbytes: int) -> None:
    # Fill the blocks the caching allocator will hand out next with NaN, so that an output
    # element the kernel failed to write shows up instead of passing by luck.
    blocks = [torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda") for _ in range(4)]
    del blocks


@cuda
@pytest.mark.parametrize("add_kind", ADDS)
@pytest.mark.parametrize("shape,groups", SHAPES + [((3, 256, 16, 16), 32), ((2, 24, 33, 17), 8)],
                         ids=SHAPE_IDS + ["C256", "C24-odd-hw"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_the_cpu_twin_and_the_reference(dtype, shape, groups, add_kind):
    x, add, weight, bias = _inputs(shape, dtype, add_kind, seed=shape[1])
    gx, gadd, gw, gb = (None if t is None else t.cuda() for t in (x, add, weight, bias))
    for silu in (False, True):
        _poison_cuda_cache(2 * x.numel() * x.element_size())
        if add is None:
            y = FO.group_norm_act(gx, groups, gw, gb, 1e-5, silu=silu)
        else:
            y, total = FO.group_norm_act(gx, groups, gw, gb, 1e-5, silu=silu, add=gadd, return_sum=True)
            assert torch.equal(total.cpu(), R.group_norm_act_reference(x, groups, None, None, 1e-5, False,
                                                                       add)[1].to(dtype))
        assert y.device.type == "cuda" and y.is_contiguous(memory_format=torch.channels_last)
        assert not torch.isnan(y).any()
        want, _ = R.group_norm_act_reference(x, groups, weight, bias, 1e-5, silu, add)
        _close(y, want, dtype)
        # The CPU twin: the same formula, the statistics summed in another order.
        _close(y, FO.group_norm_act(x, groups, weight, bias, 1e-5, silu=silu, add=add), dtype)


@cuda
def test_cuda_unaligned_and_strided_inputs_take_the_scalar_path():
    x, add, weight, bias = _inputs((2, 16, 5, 5), torch.bfloat16, "full", seed=8)
    storage = torch.empty(x.numel() + 1, dtype=x.dtype, device="cuda")
    shifted = storage[1:].view(2, 5, 5, 16).permute(0, 3, 1, 2)  # channels_last, 2 bytes off 16-byte alignment
    shifted.copy_(x)
    _poison_cuda_cache(4 * x.numel())
    y = FO.group_norm_act(shifted, 4, weight.cuda(), bias.cuda(), silu=True, add=add.cuda())
    _close(y, R.group_norm_act_reference(x, 4, weight, bias, 1e-5, True, add)[0], torch.bfloat16)


@cuda
def test_cuda_runs_on_the_current_non_default_stream():
    x, add, weight, bias = (t.cuda() for t in _inputs((4, 64, 16, 16), torch.float16, "per_channel", seed=9))
    want = FO.group_norm_act(x, 32, weight, bias, silu=True, add=add)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = FO.group_norm_act(x, 32, weight, bias, silu=True, add=add)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(got, want)


@cuda
def test_cuda_graph_capture_and_replay():
    x, add, weight, bias = (t.cuda() for t in _inputs((4, 64, 8, 8), torch.bfloat16, "full", seed=10))
    static_x, static_add = x.clone(), add.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph
        FO.group_norm_act(static_x, 32, weight, bias, silu=True, add=static_add, return_sum=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, total = FO.group_norm_act(static_x, 32, weight, bias, silu=True, add=static_add, return_sum=True)
    for seed in (11, 12):
        new_x, new_add, _, _ = _inputs((4, 64, 8, 8), torch.bfloat16, "full", seed=seed)
        static_x.copy_(new_x)
        static_add.copy_(new_add)
        graph.replay()
        want_y, want_total = FO.group_norm_act(new_x.cuda(), 32, weight, bias, silu=True, add=new_add.cuda(),
                                               return_sum=True)
        torch.cuda.synchronize()
        assert torch.equal(y, want_y) and torch.equal(total, want_total)


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_unet_fused_path_equals_the_plain_path(dtype):
    model = _small_unet().cuda().to(memory_format=torch.channels_last)
    x, t = (v.cuda() for v in _unet_inputs(n=4))
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # strict fp32 on both paths

    def run(net):
        if dtype == torch.float32:
            return net(x, t)
        with torch.autocast("cuda", dtype=dtype):
            return net(x, t)

    exact, outs = _plain_and_fused(model, x, t, run)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    if dtype == torch.float32:
        torch.testing.assert_close(outs[True], outs[False], rtol=1e-4, atol=1e-5)
    else:
        assert _rel(outs[True], exact) < 2 * _rel(outs[False], exact) + 1e-3
