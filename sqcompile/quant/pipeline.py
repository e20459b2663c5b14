"""``sqcompile quantize`` end to end: load, calibrate, quantize, save, summarize."""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from .quantize import QuantizeOptions, QuantizeReport, average_bits, quantize_model
from .storage import QuantConfig, check_writable, save_quantized

log = logging.getLogger(__name__)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class QuantizeSummary:
    output: Path
    source: str
    bits: int
    sparsity: float
    average_bits: float
    quantized_params: int
    size_mib: float  # model.safetensors
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    peak_gpu_mib: float = 0.0

    def table(self) -> str:
        lines = [f"quantized {self.source} -> {self.output}",
                 f"  bits {self.bits}, sparse {self.sparsity}%: {self.average_bits:.3f} bits per weight "
                 f"(codes + LUT + CSR) over {self.quantized_params / 1e6:.1f} M weights",
                 f"  model.safetensors {self.size_mib:.1f} MiB; peak memory {self.peak_rss_mib:.0f} MiB RSS"
                 + (f", {self.peak_gpu_mib:.0f} MiB GPU" if self.peak_gpu_mib else "")]
        lines += [f"  {stage:<18} {s:7.1f} s" for stage, s in self.seconds.items()]
        lines.append(f"  {'total':<18} {sum(self.seconds.values()):7.1f} s")
        return "\n".join(lines)


def run_quantize(model_spec: str | None, output: str, options: QuantizeOptions, force: bool = False
                 ) -> QuantizeSummary:
    import torch

    from .. import models

    options.validate()
    check_writable(output, force)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    model, tokenizer, source = models.load(model_spec)
    seconds["load"] = time.perf_counter() - t

    report = QuantizeReport()
    weights = quantize_model(model, tokenizer, options, report)
    seconds.update(report.seconds)

    t = time.perf_counter()
    config = QuantConfig(
        bits=options.bits, sparsity=options.sparsity, sensitive=options.sensitive if options.use_fisher else 0.0,
        modules=report.modules, average_bits=average_bits(weights), source_model=source.describe(),
        method="squeezellm" if options.use_fisher else "squeezellm-unweighted",
        calibration={"text": options.calibration or "austen (shared/data)", "windows": options.calib_windows,
                     "length": options.calib_length, "seed": options.seed} if options.use_fisher else {},
        kmeans={"method": options.kmeans, "iters": options.iters, "n_init": options.n_init,
                "seed": options.seed})
    out = save_quantized(output, model, tokenizer, weights, config, force=force)
    seconds["save"] = time.perf_counter() - t

    summary = QuantizeSummary(
        output=out, source=source.describe(), bits=options.bits, sparsity=options.sparsity,
        average_bits=config.average_bits,
        quantized_params=sum(q.in_features * q.out_features for q in weights.values()),
        size_mib=(out / "model.safetensors").stat().st_size / 2**20, seconds=seconds,
        peak_rss_mib=peak_rss_mib(),
        peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0)
    log.info("done in %.1f s", sum(seconds.values()))
    return summary
