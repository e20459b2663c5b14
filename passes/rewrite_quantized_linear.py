"""Replace every matmul on a quantized weight with a LUT-dequant kernel (+ its CSR sparse part).

The frontend traces a quantized linear as ``matmul(x, permute_dims(W))`` on a weight parameter ``W``. For
each such ``W`` listed in ``quantized``, this pass swaps the parameter for its packed tensors
(``W_qweight``, ``W_lut`` and, when it has a sparse part, ``W_sp_rowptr``, ``W_sp_col``, ``W_sp_val`` and
``W_sp_tiles``; in that order, where ``W`` was) and the matmul for ``call_tir`` of
``sqcompile.kernels.lut_matmul``: a GEMV kernel when the row count is static (decode: ``m = 1``), a GEMM kernel
with symbolic ``m`` otherwise (prefill), specialised to the weight's shape and bit width. The decode GEMV reads
the CSR; the prefill GEMM also gets ``sp_tiles``, the same nonzeros listed per 32 x 32 tile
(``runtime/sparse_tiles.py``). Where CUDA has no tensor-core rule of ours for it, a sparse prefill GEMM is one
function of two launches (dlight's dense GEMM, then the CSR add into its output: ``kernels/sparse_cuda.py``),
so the graph keeps one call per linear. Every other op is left alone.
"""
from __future__ import annotations

from typing import Callable

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from sqcompile.kernels.layout import takes_tiles
from sqcompile.quant.format import QuantizedWeight, packed_words

MATMUL = tvm.ir.Op.get("relax.matmul")
ASTYPE = tvm.ir.Op.get("relax.astype")
PERMUTE_DIMS = tvm.ir.Op.get("relax.permute_dims")
OPAQUE = 8  # relax op pattern kOpaque: FuseOps must not merge a scheduled kernel into others
PACKED_SUFFIXES = QuantizedWeight.KERNEL_SUFFIXES  # qweight, lut, sp_rowptr, sp_col, sp_val, sp_tiles

KernelFactory = Callable[..., tvm.tirx.PrimFunc]


def packed_param_types(q: QuantizedWeight) -> list[tuple[str, relax.TensorType]]:
    """(suffix, type) of the parameters that replace a quantized weight, in call order."""
    n = q.out_features
    types = [("qweight", relax.TensorType((n, packed_words(q.in_features, q.bits)), "uint32")),
             ("lut", relax.TensorType((n, 1 << q.bits), "float16"))]
    if q.sparse.nnz:
        nnz = tvm.tirx.Var("nnz", "int64")
        types += [("sp_rowptr", relax.TensorType((n + 1,), "int32")),
                  ("sp_col", relax.TensorType((nnz,), "int32")),
                  ("sp_val", relax.TensorType((nnz,), "float16")),
                  ("sp_tiles", relax.TensorType((tvm.tirx.Var("tiles", "int64"),), "uint32"))]
    return types


def _default_kernel(*args, **kwargs) -> tvm.tirx.PrimFunc:
    from sqcompile.kernels import lut_matmul

    return lut_matmul(*args, **kwargs)


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, quantized: dict[str, QuantizedWeight], kernel: KernelFactory,
                 target: tvm.target.Target | None):
        super().__init__(mod)
        self.quantized, self.kernel, self.target = quantized, kernel, target
        self.packed: dict[relax.Var, list[relax.Var]] = {}  # weight param -> its packed params
        self.kernels: dict[tuple, tvm.ir.GlobalVar] = {}
        self.rewritten = 0

    def _weight_of(self, expr: relax.Expr) -> relax.Var | None:
        """The quantized parameter ``W`` if ``expr`` is (bound to) ``permute_dims(W, [1, 0])``."""
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            expr = bound if bound is not None else expr
        if isinstance(expr, relax.Call) and expr.op == PERMUTE_DIMS:
            w = expr.args[0]
            axes = expr.attrs.axes
            if w in self.packed and (axes is None or [int(a) for a in axes] == [1, 0]):
                return w
        return None

    def _kernel_var(self, q: QuantizedWeight, m: int | None, dtype: str) -> tvm.ir.GlobalVar:
        sparse = q.sparse.nnz > 0
        key = (q.out_features, q.in_features, q.bits, m, sparse, dtype)
        if key not in self.kernels:
            func = self.kernel(q.out_features, q.in_features, q.bits, m=m, sparse=sparse, act_dtype=dtype,
                               target=self.target)
            func = func.with_attr("op_pattern", OPAQUE)
            kind = "gemv" if m is not None else "gemm"
            name = f"lut_{kind}_{q.bits}b_{q.out_features}x{q.in_features}{'_sp' if sparse else ''}_{dtype}"
            self.kernels[key] = self.builder_.add_func(func, name)
        return self.kernels[key]

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if isinstance(call, relax.Call) and call.op == ASTYPE and call.args[0].ty.dtype == call.attrs.dtype:
            return call.args[0]  # the cast back of an fp16 matmul whose kernel now writes fp16 itself
        if not isinstance(call, relax.Call) or call.op != MATMUL:
            return call
        w = self._weight_of(call.args[1])
        x = call.args[0]
        if w is None or len(x.ty.shape) != 2:
            return call
        q = self.quantized[w.name]
        rows = x.ty.shape[0]
        m = int(rows) if isinstance(rows, tvm.tirx.IntImm) else None
        dtype = x.ty.dtype
        self.rewritten += 1
        packed = [v for v in self.packed[w] if takes_tiles(m, True) or not v.name.endswith("_sp_tiles")]
        return relax.call_tir(self._kernel_var(q, m, dtype), [x, *packed],
                              out_ty=relax.TensorType((rows, q.out_features), dtype))

    def rewrite_function(self, func: relax.Function) -> relax.Function:
        self.packed = {}
        params = []
        for p in func.params:
            if p.name in self.quantized:
                self.packed[p] = [relax.Var(f"{p.name}_{suffix}", ty)
                                  for suffix, ty in packed_param_types(self.quantized[p.name])]
                params += self.packed[p]
            else:
                params.append(p)
        body = self.visit_expr(func.body)
        return relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs, func.span)

    def rewrite(self) -> tvm.IRModule:
        for gvar, func in list(self.builder_.get().functions.items()):
            if isinstance(func, relax.Function):
                self.builder_.update_func(gvar, self.rewrite_function(func))
        return self.builder_.get()


@tvm.transform.module_pass(opt_level=0, name="RewriteQuantizedLinear")
class RewriteQuantizedLinear:
    """See the module doc. ``quantized`` maps Relax weight-parameter names to their quantized weights."""

    def __init__(self, quantized: dict[str, QuantizedWeight], target: tvm.target.Target | None = None,
                 kernel: KernelFactory | None = None):
        self.quantized = quantized
        self.target = target
        self.kernel = kernel or _default_kernel

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mod = relax.transform.DeadCodeElimination()(_Rewriter(mod, self.quantized, self.kernel, self.target).rewrite())
        for gvar, func in mod.functions.items():
            left = sorted(v.name for v in relax.analysis.free_vars(func)) if isinstance(func, relax.Function) else []
            if left:
                raise ValueError(f"{gvar.name_hint}: quantized weights used by something other than a matmul "
                                 f"(e.g. a tied embedding): {left[:5]}")
        return mod
