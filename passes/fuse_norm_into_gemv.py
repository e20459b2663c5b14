"""Fold a decode layer's residual add + RMSNorm into the GEMVs on either side of it (CUDA).

After ``FuseRMSNorm`` a decode layer reads, twice per layer (o_proj -> gate/up, down_proj -> next q/k/v):

    o = call_tir(gemv, [a, W...])               # [1, H]
    s = add(h, o)                               # the new residual stream
    n = rms_norm(s, w)
    y = call_tir(gemv, [n, W'...])              # q/k/v, or gate/up with the SiLU epilogue

and becomes (``kernels.gemv_cuda.GemvFusion``)

    t = call_tir(gemv_res, [a, W..., h, w])     # (s, s * w, block sums of s^2)
    y = call_tir(gemv_rms, [t[1], W'..., t[2]]) # rsqrt(mean(s^2) + eps) * ((s * w) W'^T)

so the add + RMSNorm kernel between the GEMVs, 62 of a 7B step's 64, goes away; the weights are untouched.
Layer 0's norm of the embeddings and the final norm before an fp16 LM head are not between two LUT GEMVs and
keep their kernels (``FuseAddRMSNorm`` in ``fuse_elementwise``, which runs later). Runs after ``FuseRMSNorm``.
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from sqcompile.kernels.gemv_cuda import GemvFusion
from sqcompile.kernels.matmul import FUSION_ATTR

from .bindings import GemvVariants, binding_readers, bindings_and_uses, decode_gemv_fusion, rewrite_on_cuda


@dataclass
class _Fold:
    """One residual add + RMSNorm between a producer GEMV and its consumers."""

    producer: relax.Var  # o, the producer GEMV's output
    residual: relax.Expr  # h
    total: relax.Var  # s
    normed: relax.Var  # n
    weight: relax.Expr  # w
    eps: float
    consumers: list[relax.Var]  # the y's


def _static(shape) -> list[int | None]:
    return [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in shape]


def _plan(mod: tvm.IRModule, func: relax.Function) -> list[_Fold]:
    bindings, uses = bindings_and_uses(func)
    readers = binding_readers(bindings)
    folds = []
    for n, value in bindings.items():
        if not (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.nn.rms_norm")):
            continue
        s, w = value.args
        add = bindings.get(s)
        shape = _static(s.ty.shape)
        if (not (isinstance(add, relax.Call) and add.op == tvm.ir.Op.get("relax.add"))
                or [int(a) for a in value.attrs.axes] not in ([-1], [1]) or len(shape) != 2 or shape[0] != 1
                or shape[1] is None or _static(w.ty.shape) != shape[1:] or w.ty.dtype != s.ty.dtype):
            continue
        for o, h in (add.args, add.args[::-1]):  # o: a plain decode GEMV read by the add only
            if decode_gemv_fusion(mod, bindings.get(o)) == [0, 0, 0] and uses.get(o) == 1:
                break
        else:
            continue
        if _static(h.ty.shape) != shape or any(v.ty.dtype != s.ty.dtype for v in (o, h)):
            continue
        consumers = readers.get(n, [])  # each a decode GEMV reading n as its x, and nothing else
        if not consumers or uses.get(n) != len(consumers) or not all(
                (fusion := decode_gemv_fusion(mod, bindings[y])) is not None and not any(fusion[1:])
                and bindings[y].args[1].fields[0].same_as(n)
                and sum(a.same_as(n) for a in bindings[y].args[1].fields) == 1 for y in consumers):
            continue
        folds.append(_Fold(o, h, s, n, w, float(value.attrs.epsilon), consumers))
    return folds


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target):
        super().__init__(mod)
        self.mod = mod
        self.variants = GemvVariants(mod, self.builder_, target)
        self.roles: dict[relax.Var, tuple[str, _Fold]] = {}
        self.bound: dict[relax.Var, relax.Expr] = {}
        self.folded: dict[relax.Var, tuple[relax.Var, relax.Var]] = {}  # s -> (s * w, block sums)

    def transform(self, func: relax.Function) -> relax.Function:
        self.roles, self.folded = {}, {}
        self.bound, _ = bindings_and_uses(func)
        for fold in _plan(self.mod, func):
            self.roles.update({fold.producer: ("skip", fold), fold.normed: ("skip", fold),
                               fold.total: ("producer", fold)})
            self.roles.update({y: ("consumer", fold) for y in fold.consumers})
        return self.visit_expr(func) if self.roles else func

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        role, fold = self.roles.get(binding.var, (None, None))
        if role is None:
            return super().visit_var_binding_(binding)
        if role == "skip":  # o is emitted at the add, n is read only by the consumers rewritten below
            return None
        dtype = binding.var.ty.dtype
        if role == "producer":
            call = self.bound[fold.producer]
            gv = self.variants.get(call.args[0], dtype, GemvFusion(residual=True))
            blocks = int(self.builder_.get()[gv].params[-1].ty.shape[0])
            args = [self.visit_expr(a) for a in [*call.args[1].fields, fold.residual, fold.weight]]
            out = self.builder_.emit(relax.call_tir(gv, args, out_ty=[
                binding.var.ty, binding.var.ty, relax.TensorType([blocks], "float32")]), "gemv_res")
            self.set_var_remap(binding.var, self.builder_.emit(relax.TupleGetItem(out, 0), "residual"))
            self.folded[fold.total] = (self.builder_.emit(relax.TupleGetItem(out, 1), "weighted"),
                                       self.builder_.emit(relax.TupleGetItem(out, 2), "block_sq"))
            return None
        call = self.bound[binding.var]
        silu = int(self.mod[call.args[0]].attrs[FUSION_ATTR][0])
        weighted, block_sq = self.folded[fold.total]
        gv = self.variants.get(call.args[0], dtype, GemvFusion(silu=bool(silu), rms_parts=int(block_sq.ty.shape[0]),
                                                               rms_eps=fold.eps))
        args = [weighted, *[self.visit_expr(a) for a in call.args[1].fields[1:]], block_sq]
        self.set_var_remap(binding.var, self.builder_.emit(relax.call_tir(gv, args, out_ty=binding.var.ty),
                                                           "gemv_rms"))
        return None


@tvm.transform.module_pass(opt_level=0, name="FuseNormIntoGEMV")
class FuseNormIntoGEMV:
    """See the module doc. A no-op for targets other than CUDA."""

    def __init__(self, target: tvm.target.Target):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_on_cuda(mod, self.target, _Rewriter, "residual add + RMSNorm folded into the decode GEMVs")
