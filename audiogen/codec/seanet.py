"""A lean inference pass through the ``encodec`` package's SEANet encoder and decoder (and transformers'
``EncodecModel``, MusicGen's EnCodec: the same layers under other names, see :func:`_kind`).

:func:`run_layers` computes what ``torch.nn.Sequential(*layers)(x)`` computes for the layers of an
``encodec.modules.SEANetEncoder``/``SEANetDecoder`` (``SConv1d``, ``SConvTranspose1d``, ``SEANetResnetBlock``,
``ELU``, ``SLSTM``), with fewer passes over memory. Measured on this project's 2-core CPU (docs/prep.md,
"Lean SEANet pass"), the package's forward spends about a fifth of the 24 kHz encoder's time padding:
every convolution copies its input into a reflect-padded tensor, and ``reflection_pad1d`` is a slow
kernel (an ``ELU`` and the pad after it: 74 ms over a [4, 32, 100000] tensor, against 13 ms for the
``ELU`` alone). Here:

- an activation followed by a convolution writes its output straight into the convolution's padded
  buffer (``elu.out`` into a view), and only the few padding samples are filled in, by the same
  reflection (the same values as ``F.pad(..., mode="reflect")``);
- a 1x1 convolution is a matrix product (``addmm``/``baddbmm``: on two threads twice as fast as the
  convolution kernel on a long input), and a residual block's 1x1 convolution and its 1x1 shortcut
  accumulate into one output, with no separate sum;
- a transposed convolution is one matrix product and an overlap-add (:func:`_conv_transpose_gemm`);
- weight-normed weights are computed once per call, as the package's hook does.

:func:`run_chunked` runs a causal model's convolutions (the 24 kHz kind's, either side of its LSTM) in
chunks of 4 s with each layer's state carried over, so the joined output is the whole input's, while each
layer's tensors stay small enough for the cache (a 31 s window costs 19 % more per second than 2-5 s).

Anything else (an ``LSTM``, a normalisation, a padding mode other than reflect, an input shorter than
its padding) goes through the module itself, so the result is the package's up to float rounding
(checked in ``tests/codec/test_seanet.py``). Inference only: nothing here records gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


_IDENTITY = torch.nn.Identity()


def _kind(layer: torch.nn.Module) -> str | None:
    """What ``layer`` is, by class name: the encodec package's ``SConv1d``/``SConvTranspose1d``/
    ``SEANetResnetBlock`` and transformers' ``EncodecConv1d``/``EncodecConvTranspose1d``/``EncodecResnetBlock``
    (MusicGen's EnCodec) are the same computation with other attribute names; None: run the module."""
    return {"SConv1d": "conv", "EncodecConv1d": "conv", "SConvTranspose1d": "convtr", "EncodecConvTranspose1d": "convtr",
            "SEANetResnetBlock": "block", "EncodecResnetBlock": "block", "ELU": "elu"}.get(type(layer).__name__)


def _parts(m: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the torch convolution, the normalisation after it: Identity or a GroupNorm) of a conv layer."""
    if hasattr(m, "norm_type"):  # transformers: the convolution itself, a norm only for time_group_norm
        return m.conv, (m.norm if m.norm_type == "time_group_norm" else _IDENTITY)
    inner = m.conv if hasattr(m, "conv") else m.convtr  # encodec: NormConv1d / NormConvTranspose1d
    return (inner.conv if hasattr(inner, "conv") else inner.convtr), inner.norm


def _weight(conv: torch.nn.Module) -> torch.Tensor:
    """A convolution's weight, computed from its weight norm's parameters when it has one (the old
    ``torch.nn.utils.weight_norm`` hook the encodec package uses; parametrizations compute on access);
    detached: ``matmul`` does not fold a batch into one matrix product for a weight that requires grad
    (the 48 kHz decoder's last transposed convolution: 209 ms against 58 ms)."""
    from torch.nn.utils.weight_norm import WeightNorm

    for hook in conv._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            return hook.compute_weight(conv).detach()
    return conv.weight.detach()


def _plain(norm: torch.nn.Module) -> bool:
    return isinstance(norm, torch.nn.Identity)


def _pads(m, length: int) -> tuple[int, int]:
    """(left, right) padding a conv layer's forward (``encodec``'s ``SConv1d``, transformers' ``EncodecConv1d``)
    gives an input of ``length`` samples."""
    from encodec.modules.conv import get_extra_padding_for_conv1d

    conv = _parts(m)[0]
    k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    total = (k - 1) * d - (s - 1)
    # the package counts the kernel without its dilation here, transformers with it (SEANet's strided
    # convolutions are undilated: the same padding)
    extra = get_extra_padding_for_conv1d(torch.empty(0, 0, length, device="meta"),
                                         (k - 1) * d + 1 if hasattr(m, "norm_type") else k, s, total)
    if m.causal:
        return total, extra
    right = total // 2
    return total - right, right + extra


def _act_into(act: torch.nn.Module | None, x: torch.Tensor, out: torch.Tensor) -> None:
    if act is None:
        out.copy_(x)
    else:
        torch.ops.aten.elu.out(x, act.alpha, 1, 1, out=out)


def _act(act: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if act is None else F.elu(x, act.alpha)


def _matmul_1x1(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """``conv1d(x, weight, bias)`` for a 1x1 kernel: ``out + weight @ x`` (bias added when ``out`` is None)."""
    w = weight[:, :, 0]
    if out is None:
        if bias is None:
            return torch.matmul(w, x)
        return torch.baddbmm(bias[None, :, None], w.expand(x.shape[0], -1, -1), x)
    return out.baddbmm_(w.expand(x.shape[0], -1, -1), x)


def _is_1x1(m) -> bool:
    conv, norm = _parts(m)
    return conv.kernel_size[0] == 1 and conv.stride[0] == 1 and conv.groups == 1 and _plain(norm)


def conv1d(m, x: torch.Tensor, act: torch.nn.Module | None = None, state: dict | None = None) -> torch.Tensor:
    """``m(act(x))`` for an ``SConv1d`` ``m`` and an ``ELU`` (or no) ``act``; ``state``: see :func:`run_layers`."""
    left, right = _pads(m, x.shape[-1])
    length = x.shape[-1]
    conv, norm = _parts(m)
    carried = None if state is None or not left else state.get(id(m))
    if carried is None and (m.pad_mode != "reflect" or length <= max(left, right)):  # the package's own rules
        if state is not None and left:  # a first chunk must pad as the whole input does
            raise ValueError(f"a chunk of {length} samples is too short for a convolution padded by {left}")
        return m(_act(act, x))
    weight, bias = _weight(conv), conv.bias
    if left == right == 0:
        h = _act(act, x)
        if _is_1x1(m):
            return _matmul_1x1(weight, bias, h)
    else:
        h = x.new_empty((*x.shape[:-1], left + length + right))
        _act_into(act, x, h[..., left : left + length])
        if carried is not None:  # the input's last samples before this chunk: what a whole pass sees there
            h[..., :left] = carried
        elif left:  # reflect: h[left - i] = h[left + i]
            h[..., :left] = h[..., left + 1 : 2 * left + 1].flip(-1)
        if right:
            end = left + length
            h[..., end:] = h[..., end - right - 1 : end - 1].flip(-1)
        if state is not None and left:
            state[id(m)] = h[..., length : length + left].clone()
    y = F.conv1d(h, weight, bias, conv.stride, 0, conv.dilation, conv.groups)
    return norm(y)


def _conv_transpose_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int) -> torch.Tensor:
    """``F.conv_transpose1d(x, weight, bias, stride)`` as one matrix product and an overlap-add: every input
    frame's ``[C_out, k]`` contribution is ``weight^T @ x[:, t]``; with ``k`` padded to ``m`` strides, the
    contributions' ``m`` stride-long pieces are added into ``m`` shifted copies of the output's blocks.
    On CPU torch's transposed convolution does not go through oneDNN and copies its output: this is 1.7x
    faster (the 24 kHz decoder's four, 30 s, two threads: 350 ms -> 211 ms)."""
    B, c_in, T = x.shape
    c_out, k = weight.shape[1], weight.shape[2]
    m = -(-k // stride)
    if k < m * stride:
        weight = F.pad(weight, (0, m * stride - k))
    y = torch.matmul(weight.reshape(c_in, c_out * m * stride).t(), x).view(B, c_out, m, stride, T)
    out = x.new_empty((B, c_out, T + m - 1, stride))
    first = y[:, :, 0].transpose(-1, -2)
    if bias is None:
        out[:, :, :T] = first
        out[:, :, T:] = 0
    else:
        torch.add(first, bias[:, None, None], out=out[:, :, :T])
        out[:, :, T:] = bias[:, None, None]
    for j in range(1, m):
        out[:, :, j : j + T] += y[:, :, j].transpose(-1, -2)
    return out.view(B, c_out, (T + m - 1) * stride)[..., : (T - 1) * stride + k]


def conv_transpose1d(m, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    """``m(x)`` for an ``SConvTranspose1d`` ``m`` (its trimmed output is a view); ``state``: see :func:`run_layers`.

    A causal one's output trimmed on the right is what the next chunk's first samples still need: with
    ``state``, the trimmed tail (less the bias) is kept and added to the next chunk's head."""
    convtr, norm = _parts(m)
    if convtr.groups == 1 and convtr.dilation[0] == 1 and convtr.output_padding[0] == 0 and convtr.padding[0] == 0:
        y = _conv_transpose_gemm(x, _weight(convtr), convtr.bias, convtr.stride[0])
    else:
        y = F.conv_transpose1d(x, _weight(convtr), convtr.bias, convtr.stride, convtr.padding,
                               convtr.output_padding, convtr.groups, convtr.dilation)
    y = norm(y)
    total = convtr.kernel_size[0] - convtr.stride[0]
    right = math.ceil(total * m.trim_right_ratio) if m.causal else total // 2
    left = total - right
    if state is not None and total:
        tail = state.get(id(m))
        if tail is not None:
            y[..., : tail.shape[-1]] += tail
        tail = y[..., y.shape[-1] - right :].clone()
        state[id(m)] = tail if convtr.bias is None else tail - convtr.bias[:, None]
    return y[..., left : y.shape[-1] - right]


def resnet_block(m, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    """``m(x)`` for a ``SEANetResnetBlock``: ``shortcut(x) + block(x)``; a 1x1 last convolution and a 1x1
    shortcut are summed in one output."""
    layers = list(m.block)
    h = x
    pending: torch.nn.Module | None = None
    for layer in layers[:-1]:
        h, pending = _step(layer, h, pending, state)
    last = layers[-1]
    short = m.shortcut
    if (_kind(last) == "conv" and _kind(short) == "conv" and _is_1x1(last) and _is_1x1(short)
            and h.shape[-1] == x.shape[-1]):
        (cs, _), (cb, _) = _parts(short), _parts(last)
        ws, wb, bs, bb = _weight(cs), _weight(cb), cs.bias, cb.bias
        bias = bs + bb if bs is not None and bb is not None else bs if bb is None else bb
        y = _matmul_1x1(ws, bias, x)
        return _matmul_1x1(wb, None, _act(pending, h), out=y)
    h, pending = _step(last, h, pending, state)
    h = _act(pending, h)
    return (x if isinstance(short, torch.nn.Identity) else _step(short, x, None, state)[0]) + h


def _step(layer: torch.nn.Module, x: torch.Tensor, pending: torch.nn.Module | None, state: dict | None = None):
    """Apply ``layer`` to ``pending(x)``; returns (output, activation still to apply). An ELU is held
    back (``pending``) so that the convolution after it can write it into its padded input."""
    kind = _kind(layer)
    if kind == "elu" and pending is None:
        return x, layer
    if kind == "conv":
        return conv1d(layer, x, pending, state), None
    x = _act(pending, x)
    if kind == "convtr":
        return conv_transpose1d(layer, x, state), None
    if kind == "block":
        return resnet_block(layer, x, state), None
    if state is not None:
        raise ValueError(f"{type(layer).__name__} cannot run in chunks")
    return layer(x), None


@torch.inference_mode()
def run_layers(layers: list[torch.nn.Module], x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    """``torch.nn.Sequential(*layers)(x)`` for a run of SEANet layers, with fewer passes over memory.

    ``state`` (a dict, empty for the first chunk) runs a causal run chunk by chunk: each convolution keeps
    the last samples of its input, and each transposed convolution the tail of its output, for the next
    chunk, so the chunks' outputs joined are the whole input's output (up to float rounding). Only for
    causal layers without an LSTM or a normalisation over time, and chunks of whole frames (a multiple of
    the run's total stride): see :func:`run_chunked`.

    It runs in the weights' precision (float32) even inside an autocast region (an LM's training loop
    decoding a sample): its in-place products would otherwise mix autocast's bfloat16 with float32."""
    pending: torch.nn.Module | None = None
    with torch.autocast(x.device.type, enabled=False):
        for layer in layers:
            x, pending = _step(layer, x, pending, state)
        return _act(pending, x)


def can_run_chunked(layers: list[torch.nn.Module]) -> bool:
    """Whether :func:`run_chunked` may cut ``layers``: causal (left) reflect padding, no normalisation over time,
    no LSTM or other stateful layer."""

    def ok(layer) -> bool:
        kind = _kind(layer)
        if kind == "elu":
            return True
        if kind == "conv":  # the first chunk pads by reflection, as a whole pass does
            return layer.causal and layer.pad_mode == "reflect" and _plain(_parts(layer)[1])
        if kind == "convtr":
            return layer.causal and _plain(_parts(layer)[1]) and layer.trim_right_ratio == 1.0
        if kind == "block":
            return all(map(ok, layer.block)) and (isinstance(layer.shortcut, torch.nn.Identity) or ok(layer.shortcut))
        return False

    return all(map(ok, layers))


def _input_step(layers: list[torch.nn.Module]) -> int:
    """Input samples per output frame of a run: the product of its convolutions' strides."""
    return math.prod(_parts(layer)[0].stride[0] for layer in layers if _kind(layer) == "conv")


#: the chunk :func:`run_chunked` cuts, in frames (of the run's total stride): 300 frames of the 24 kHz
#: encoder are 4 s. Measured, its convolutions, one thread, ms per second of audio: 31 s at
#: once 30.9, 11 s 28.5, 5 s 26.3, 2 s 26.0 (the intermediate tensors of a long window leave the cache)
CHUNK_FRAMES = 300


@torch.inference_mode()
def run_chunked(layers: list[torch.nn.Module], x: torch.Tensor, frames: int = CHUNK_FRAMES) -> torch.Tensor:
    """:func:`run_layers` over ``x [B, C, L]`` in chunks of ``frames`` frames with carried state, when
    :func:`can_run_chunked` allows and ``L`` is whole frames; else in one pass. The result equals one pass
    up to float rounding; the chunks keep each layer's tensors small enough to stay in the cache.

    ``frames`` is at least 8: the first chunk is padded as the whole input is (reflection), which needs every
    convolution's input in it longer than its padding (SEANet's widest at the frame rate has 7 taps)."""
    step = _input_step(layers)
    size = max(8, frames) * step
    if x.shape[-1] <= size or x.shape[-1] % step or not can_run_chunked(layers):
        return run_layers(layers, x)
    state: dict = {}
    return torch.cat([run_layers(layers, x[..., a : a + size], state) for a in range(0, x.shape[-1], size)], -1)


#: frames per block of :func:`rvq_encode`: its scores are ``[rows, bins]`` (4096 x 1024 floats: 16 MB)
RVQ_ROWS = 4096


@torch.inference_mode()
def rvq_encode(vq: torch.nn.Module, x: torch.Tensor, n_q: int, rows: int = RVQ_ROWS) -> torch.Tensor:
    """``vq.encode(x, n_q)`` for the encodec package's ``ResidualVectorQuantization``: ``x [B, D, T]`` ->
    codes ``[n_q, B, T]``, in blocks of ``rows`` frames.

    The package scores every frame against every code at once, ``-(|x|^2 - 2 x.e + |e|^2)`` over
    ``[B * T, bins]`` with a temporary per term (8 x 30 s of the 24 kHz kind: 74 MB each, 740 MB of fresh
    memory on a process's first call, 2.7 s against 0.7 s warm). Here each block's ``2 x.e - |e|^2`` is one
    product (``|x|^2`` does not change which code is nearest), and the residual is updated in place. The
    codes are the package's up to float rounding of near ties."""
    layers = list(vq.layers[:n_q])
    if any(not isinstance(layer.project_in, torch.nn.Identity) for layer in layers):
        return vq.encode(x, n_q=n_q)
    B, D, T = x.shape
    residual = x.transpose(1, 2).reshape(B * T, D).clone()
    codes = torch.empty((len(layers), B * T), dtype=torch.long, device=x.device)
    with torch.autocast(x.device.type, enabled=False):
        for q, layer in enumerate(layers):
            embed = layer._codebook.embed  # [bins, D]
            e2 = embed.pow(2).sum(1)
            for a in range(0, B * T, rows):
                block = residual[a : a + rows]
                idx = torch.addmm(e2, block, embed.t(), beta=-1, alpha=2).argmax(-1)
                codes[q, a : a + rows] = idx
                block -= embed[idx]
    return codes.view(len(layers), B, T)
