"""The PyTorch + HF `transformers` equivalent of this project's task-distillation steps, for
bench_td_throughput.py (run as a subprocess with the benchmark venv's python: transformers pins tokenizers<=0.23.0,
which conflicts with the MindSpore venv's tokenizers==0.23.3).

Same shapes, same losses, same optimizer settings, same thread count:
- phase 1: frozen teacher forward (eval, no_grad) + student forward/backward; loss = sum of attention MSE over the
  uniform layer map + hidden MSE (student hidden -> shared Linear fit_dense -> teacher width) over L_s+1 states,
  padding masked; AdamW(weight_decay 1e-4, eps 1e-6), global grad-norm clip 1.0.
- phase 2 (teacher live): teacher logits (no_grad) + student soft cross-entropy (mean over batch x classes).
Attention targets are HF's `output_attentions` (post-softmax probabilities); the project distils pre-softmax
scores. Same tensor sizes and FLOPs, so the speed comparison holds.

    python benchmarks/torch_td_loop.py SPEC.json   -> prints one JSON line {"phase1": {seq: s/step}, ...}
"""
import json
import statistics
import sys
import time


def main(path):
    spec = json.load(open(path, encoding="utf-8"))
    import torch
    import transformers
    from torch import nn
    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)

    def model(cfg):
        c = transformers.BertConfig(**cfg, attn_implementation="eager")
        return transformers.BertForSequenceClassification(c)

    teacher, student = model(spec["teacher"]), model(spec["student"])
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.train()
    fit = nn.Linear(spec["student"]["hidden_size"], spec["teacher"]["hidden_size"])
    params = list(student.parameters()) + list(fit.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, eps=1e-6)
    att_map, hid_map = spec["attention_map"], spec["hidden_map"]
    b, steps = int(spec["batch"]), int(spec["steps"])
    vocab = spec["teacher"]["vocab_size"]

    def batch(seq):
        g = torch.Generator().manual_seed(seq)
        ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (b, seq), generator=g)
        lengths = torch.randint(max(2, seq // 2), seq + 1, (b,), generator=g)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        return ids * mask, torch.zeros_like(ids), mask, torch.randint(0, 2, (b,), generator=g)

    def phase1(ids, tt, mask, labels):
        with torch.no_grad():
            t = teacher(input_ids=ids, token_type_ids=tt, attention_mask=mask, output_hidden_states=True,
                        output_attentions=True)
        s = student(input_ids=ids, token_type_ids=tt, attention_mask=mask, output_hidden_states=True,
                    output_attentions=True)
        m = mask.float()
        pair = (m[:, None, :, None] * m[:, None, None, :])
        att = sum((((s.attentions[i] - t.attentions[j]) ** 2) * pair).sum() / (pair.sum() * s.attentions[i].shape[1])
                  for i, j in enumerate(att_map))
        rep = sum((((fit(s.hidden_states[i]) - t.hidden_states[j]) ** 2) * m[:, :, None]).sum()
                  / (m.sum() * t.hidden_states[j].shape[-1]) for i, j in enumerate(hid_map))
        return att + rep

    def phase2(ids, tt, mask, labels):
        with torch.no_grad():
            tl = teacher(input_ids=ids, token_type_ids=tt, attention_mask=mask).logits
        sl = student(input_ids=ids, token_type_ids=tt, attention_mask=mask).logits
        return (-(torch.softmax(tl, -1) * torch.log_softmax(sl, -1))).mean()

    def step(loss_fn, data):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(*data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss)

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads()}
    for name, fn in (("phase1", phase1), ("phase2", phase2)):
        out[name] = {}
        for seq in spec["seqs"]:
            data = batch(int(seq))
            step(fn, data)                                     # warm-up
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                loss = step(fn, data)
                times.append(time.perf_counter() - t0)
            if loss != loss:
                raise FloatingPointError(f"torch {name} loss is NaN")
            out[name][str(seq)] = statistics.median(times)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
