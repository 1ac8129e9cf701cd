"""The README's version of the tutorials' GPT-2 fine-tuning recipe runs as written."""

import torch

from multimodaltransformer import load_pretrained


def test_seed_gpt2_fine_tuning_recipe(parts):
    model = load_pretrained(parts / "gpt2")
    tok = model.tokenizer
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [["a red circle left of a blue square", "how many objects are there?"]] * 30
    losses = []
    for texts in batches:
        enc = tok.encode_batch(texts)
        T = max(len(e.ids) for e in enc)
        ids = torch.tensor([e.ids + [0] * (T - len(e.ids)) for e in enc])
        mask = torch.tensor([[1] * len(e.ids) + [0] * (T - len(e.ids)) for e in enc])
        out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0]
