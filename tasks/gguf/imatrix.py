"""The imatrix stage: unquantized GGUF + calibration data -> importance matrix, computed by llama.cpp itself.

Why llama.cpp on the F16 GGUF rather than torch hooks on the merged model: the activations are the ones
llama.cpp's own graph feeds each weight matrix (llama-imatrix's method: an eval callback on every
MUL_MAT whose weight is a `blk.*` tensor), so the names are the GGUF's own and nothing has to map HF
modules to GGUF tensors (fused QKV, permuted Q/K, tied embeddings differ per architecture); memory is the
memory-mapped GGUF plus one chunk's context, as for the check; and it is reproducible: ggml's CPU ops
compute each output element in one thread in a fixed order, and the sums here are float64 in graph
order (tested: byte-identical with 1 and 2 threads, in two directories).

The calibration documents (tasks.core.config.calibration) are tokenized by the GGUF's own tokenizer
(chats rendered by llama.cpp's chat template for the model, or as "role: content" lines when it has
none), concatenated and cut into chunks of `chunk` tokens, each decoded alone with a fresh KV cache
(BOS first when the model uses one). Batches under 16 tokens are skipped as llama-imatrix does.
The llama.cpp calls run in a child process, as quantization does (signals, native log lines).
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.core import atomic, procs, toolchain
from tasks.core.config.calibration import Record, read_calibration
from tasks.core.config.schema import Config
from tasks.core.errors import UserError
from tasks.core.layout import REPO
from tasks.core.stage import Stage
from tasks.gguf import imatrix_file

MIN_ROWS = 16  # llama-imatrix ignores smaller batches
# enum ggml_op of the pinned ggml.h; checked against ggml_op_name at run time, so a new pin cannot drift silently.
GGML_OP_MUL_MAT, GGML_OP_MUL_MAT_ID = 29, 30


def _ggml() -> Any:
    from llama_cpp import _ggml as g

    lib = g.libggml
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return lib


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor of the pinned ggml.h (GGML_MAX_DIMS 4, GGML_MAX_SRC 10, GGML_MAX_NAME 64)."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


def _weight_name(raw: bytes) -> str:
    """llama-imatrix's filter_tensor_name: 'CUDA0#blk.0.attn_k.weight#0' -> 'blk.0.attn_k.weight'."""
    name = raw.decode("utf-8", "replace")
    if "#" in name:
        name = name.split("#")[1]
    return name


class Collector:
    """Sums of squared activations per weight tensor, fed by llama.cpp's eval callback."""

    def __init__(self) -> None:
        import numpy as np

        self.np = np
        self.lib = _ggml()
        for op, name in ((GGML_OP_MUL_MAT, b"MUL_MAT"), (GGML_OP_MUL_MAT_ID, b"MUL_MAT_ID")):
            if self.lib.ggml_op_name(op) != name:
                raise UserError(f"ggml op {op} is {self.lib.ggml_op_name(op)!r}, not {name!r}: the llama.cpp pin "
                                "changed ggml's op list (update GGML_OP_MUL_MAT in tasks/gguf/imatrix.py)")
        self.mul_mat, self.mul_mat_id = GGML_OP_MUL_MAT, GGML_OP_MUL_MAT_ID
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, Any] = {}
        self.error: str | None = None

    def __call__(self, t_ptr: int, ask: bool, _user: Any) -> bool:
        try:
            return self._collect(t_ptr, ask)
        except Exception as exc:  # never let a Python exception unwind through C
            self.error = self.error or f"{type(exc).__name__}: {exc}"
            return False

    def _collect(self, t_ptr: int, ask: bool) -> bool:
        t = GgmlTensor.from_address(t_ptr)
        if t.op == self.mul_mat_id:
            if ask:
                self.error = self.error or "mixture-of-experts matrices (MUL_MAT_ID) are not supported yet"
            return False
        if t.op != self.mul_mat or not t.src[0] or not t.src[1]:
            return False
        src0, src1 = GgmlTensor.from_address(t.src[0]), GgmlTensor.from_address(t.src[1])
        name = _weight_name(src0.name)
        if ask:
            return src1.ne[1] >= MIN_ROWS and src1.type == 0 and name.startswith("blk.")
        np = self.np
        nbytes = self.lib.ggml_nbytes(t.src[1])
        buf = np.empty(nbytes // 4 + 1, dtype=np.float32)
        self.lib.ggml_backend_tensor_get(t.src[1], buf.ctypes.data, 0, nbytes)
        ne = [src1.ne[i] for i in range(4)]
        x = np.lib.stride_tricks.as_strided(buf, shape=(ne[3], ne[2], ne[1], ne[0]),
                                            strides=tuple(src1.nb[i] for i in (3, 2, 1, 0)))
        n_mat = src0.ne[2] * src0.ne[3]
        sq = np.square(x, dtype=np.float64)
        acc = self.sums.setdefault(name, np.zeros((n_mat, ne[0]), dtype=np.float64))
        if n_mat == 1:
            acc[0] += sq.sum(axis=(0, 1, 2))
        else:  # 3D weights (stacked matrices): broadcast over src1's higher dimensions as llama.cpp does
            for i3 in range(ne[3]):
                for i2 in range(ne[2]):
                    acc[(i3 % src0.ne[3]) * src0.ne[2] + (i2 % src0.ne[2])] += sq[i3, i2].sum(axis=0)
        self.counts[name] = self.counts.get(name, 0) + (ne[1] * ne[2] * ne[3]) // n_mat
        if not np.isfinite(acc).all():
            self.error = self.error or f"non-finite activations in {name}"
        return True


def _tokens(llama_cpp: Any, model: Any, vocab: Any, records: list[Record]) -> list[int]:
    tmpl = llama_cpp.llama_model_chat_template(model, None)
    out: list[int] = []
    for rec in records:
        text = rec.text if rec.text is not None else _render(llama_cpp, tmpl, rec)
        data = text.encode("utf-8")
        buf = (llama_cpp.llama_token * (len(data) + 16))()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), False, rec.text is None)
        if n < 0:
            raise UserError(f"{rec.where}: llama.cpp could not tokenize it")
        out.extend(buf[:n])
    return out


def _render(llama_cpp: Any, tmpl: bytes | None, rec: Record) -> str:
    """A chat as the model's template writes it (llama.cpp's built-in rendering of that template)."""
    if tmpl:
        keep = [(r.encode(), c.encode()) for r, c in rec.messages]
        msgs = (llama_cpp.llama_chat_message * len(keep))(*[llama_cpp.llama_chat_message(r, c) for r, c in keep])
        size = sum(len(r) + len(c) for r, c in keep) * 2 + 256
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_chat_apply_template(tmpl, msgs, len(keep), False, buf, size)
            if n < 0:
                break
            if n <= size:
                return buf.raw[:n].decode("utf-8", "replace")
            size = n + 1
    return "".join(f"{role}: {content}\n" for role, content in rec.messages)


def compute(gguf: Path, data: list[Path], chunk: int, threads: int) -> imatrix_file.Imatrix:
    """The importance matrix of `gguf` over the calibration files (runs llama.cpp in this process)."""
    import llama_cpp

    records = [r for p in data for r in read_calibration(p)]
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), mparams)
    if not model:
        raise UserError(f"{gguf}: llama.cpp cannot load it")
    vocab = llama_cpp.llama_model_get_vocab(model)
    tokens = _tokens(llama_cpp, model, vocab, records)
    bos = llama_cpp.llama_vocab_bos(vocab) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
    body = chunk - (bos is not None)
    chunks = [tokens[i:i + body] for i in range(0, len(tokens), body)]
    chunks = [([bos] if bos is not None else []) + c for c in chunks if len(c) >= MIN_ROWS]
    if not chunks:
        raise UserError(f"{', '.join(p.name for p in data)}: only {len(tokens)} calibration tokens "
                        f"(need at least {MIN_ROWS})")
    collector = Collector()
    callback = llama_cpp.ggml_backend_sched_eval_callback(collector)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = chunk
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.cb_eval = callback
    cparams.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        raise UserError(f"{gguf}: llama.cpp could not create a context of {chunk} tokens")
    batch = llama_cpp.llama_batch_init(chunk, 0, 1)
    try:
        for ids in chunks:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            # Every position an output, as llama-imatrix computes them: otherwise llama.cpp drops all
            # rows but the last before the last layer's FFN, and those matrices would see one token.
            batch.n_tokens = len(ids)
            for i, tok in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, i, 1, True
                batch.seq_id[i][0] = 0
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0 or collector.error:
                raise UserError(f"{gguf}: computing the importance matrix failed: {collector.error or f'decode {rc}'}")
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    if not collector.sums:
        raise UserError(f"{gguf}: llama.cpp reported no weight matrix products (nothing to compute a matrix from)")
    return imatrix_file.Imatrix(collector.sums, {k: [v] for k, v in collector.counts.items()},
                                [p.name for p in data], len(chunks), chunk)


def build(stage: Stage, config: Config) -> None:
    toolchain.check_runtime()
    (final,) = stage.outputs
    data = [stage.inputs[k] for k in sorted(stage.inputs, key=lambda k: (len(k), k)) if k.startswith("data:")]
    job = {"gguf": str(stage.inputs["gguf"]), "data": [str(p) for p in data], "chunk": stage.params["chunk"],
           "threads": config.threads}
    stage.log.parent.mkdir(parents=True, exist_ok=True)
    spec = config.models[stage.model].imatrix if stage.model in config.models else None
    with open(stage.log, "a", encoding="utf-8") as fh:
        fh.write(f"{stage.task}: calibration data: {', '.join(p.name for p in data)}\n")
        for note in spec.notes if spec else ():
            fh.write(f"{stage.task}: {note}\n")
    with atomic.atomic_file(final) as tmp, open(stage.log, "ab") as log_fh:
        job["out"] = str(tmp)
        # A stage child like the converter's: it dies with the worker (tasks/core/procs.py).
        proc = procs.run([sys.executable, "-m", "tasks.gguf.imatrix", json.dumps(job)], stdout=log_fh,
                         stderr=subprocess.PIPE, cwd=REPO)
        err = proc.stderr
        log_fh.write(err)
        if proc.returncode != 0:
            lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.startswith("modelmake: error: ")]
            why = lines[-1].removeprefix("modelmake: error: ") if lines else f"exit {proc.returncode}"
            raise UserError(f"{why} (log: {stage.log})")


def _main(job: dict[str, Any]) -> int:
    try:
        m = compute(Path(job["gguf"]), [Path(p) for p in job["data"]], job["chunk"], job["threads"])
    except UserError as exc:
        print(f"modelmake: error: {exc}", file=sys.stderr)
        return 2
    imatrix_file.write(Path(job["out"]), m)
    return 0


if __name__ == "__main__":
    sys.exit(_main(json.loads(sys.argv[1])))
