"""Synthetic token sequences whose explanation is known: the rationale tokens.

Each sequence is ``[CLS] content [SEP] [PAD]...``. The content is noise tokens with one to
``max_rationale`` rationale tokens of the label's class at random positions (each one alone decides
the label) and one spurious *cue* token whose class can be made to agree with the label (``bias``);
the test split is always bias-conflicting.

Items are generated on the fly from ``(seed, split, index)`` alone, so access order, shuffling and
DataLoader workers never change the data.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_xai._checks import check_in_choices, check_int, check_tensor
from lightning_xai.data._datamodule import SyntheticDataModule
from lightning_xai.data.shapes import (
    SPLITS,
    _check_bias,
    _check_seed,
    _draw_cue,
    _item_generator,
    _normalize_index,
    agreement_rate,
)

__all__ = ["TokensDataModule", "TokensDataset"]

PAD_TOKEN_ID = 0
CLS_TOKEN_ID = 1
SEP_TOKEN_ID = 2
MASK_TOKEN_ID = 3  # never generated; a neutral replacement for deleted tokens in perturbation methods
_NUM_SPECIAL = 4
_MIN_NOISE_TOKENS = 8
_TOKENS_STREAM = 0x544B


class TokensDataset(Dataset):
    """Token sequences whose label is decided by class-specific rationale tokens among noise tokens.

    The vocabulary is laid out as: special ids (``PAD=0``, ``CLS=1``, ``SEP=2``, ``MASK=3``), one cue
    token per class (:attr:`cue_token_ids`), ``rationale_per_class`` rationale tokens per class
    (:attr:`rationale_token_ids`, shape ``(num_classes, rationale_per_class)``), then noise tokens
    up to ``vocab_size``.

    Args:
        num_samples: number of items.
        num_classes: number of classes (at least 2).
        seq_len: padded length ``L`` of every sequence.
        min_length: shortest real length (``CLS`` and ``SEP`` included); real lengths are uniform in
            ``[min_length, seq_len]``.
        vocab_size: size of the vocabulary, noise tokens included.
        rationale_per_class: number of distinct rationale tokens of each class.
        max_rationale: a sequence holds between 1 and ``max_rationale`` rationale tokens, all of the
            label's class, and no rationale token of another class; each is a sufficient explanation.
        bias: the probability that the cue token is that of the label's class (the bias-aligned
            fraction); otherwise the cue class is drawn uniformly from the other classes. ``None`` (the
            default) draws it uniformly from all classes, independently of the label.
        split: ``"train"``, ``"val"`` or ``"test"``; the test split is always bias-conflicting: its
            cue never equals the label.
        seed: item ``i`` depends only on ``(seed, split, i)``.

    Items are dicts with ``input_ids`` (int64 ``(L,)``), ``attention_mask`` (int64 ``(L,)``, 1 on
    ``CLS``, content and ``SEP``), ``rationale_mask`` (bool ``(L,)``, exactly the rationale tokens),
    ``label``, ``cue`` and ``index`` (int64 scalars). They fit a Hugging Face encoder such as
    ``BertForSequenceClassification`` with ``vocab_size=ds.vocab_size`` and ``pad_token_id=0``.

    Example:
        >>> ds = TokensDataset(8, seq_len=16, bias=1.0, seed=2)
        >>> item = ds[0]
        >>> item["input_ids"].shape, item["input_ids"][0].item() == ds.cls_token_id
        (torch.Size([16]), True)
        >>> bool((ds.predict_by_rule(item["input_ids"]) == item["label"]).all())
        True
        >>> item["cue"].item() == item["label"].item()
        True
    """

    pad_token_id = PAD_TOKEN_ID
    cls_token_id = CLS_TOKEN_ID
    sep_token_id = SEP_TOKEN_ID
    mask_token_id = MASK_TOKEN_ID

    def __init__(
        self,
        num_samples: int = 1000,
        *,
        num_classes: int = 4,
        seq_len: int = 32,
        min_length: int = 8,
        vocab_size: int = 256,
        rationale_per_class: int = 4,
        max_rationale: int = 3,
        bias: float | None = None,
        split: str = "train",
        seed: int = 0,
    ) -> None:
        self.num_samples = check_int("num_samples", num_samples, 0)
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.rationale_per_class = check_int("rationale_per_class", rationale_per_class, 1)
        self.max_rationale = check_int("max_rationale", max_rationale, 1)
        # CLS, SEP and the cue token come on top of the rationale tokens.
        self.min_length = check_int("min_length", min_length, self.max_rationale + 3)
        self.seq_len = check_int("seq_len", seq_len, self.min_length)
        self.bias = _check_bias(bias)
        check_in_choices("split", split, SPLITS)
        self.split = split
        self.seed = _check_seed(seed)
        self.conflicting = split == "test"

        self.cue_start = _NUM_SPECIAL
        self.rationale_start = self.cue_start + num_classes
        self.noise_start = self.rationale_start + num_classes * rationale_per_class
        self.vocab_size = check_int("vocab_size", vocab_size, self.noise_start + _MIN_NOISE_TOKENS)
        self.cue_token_ids = torch.arange(self.cue_start, self.rationale_start)
        self.rationale_token_ids = torch.arange(self.rationale_start, self.noise_start).view(
            num_classes, rationale_per_class
        )
        self._positions = torch.arange(seq_len)

    @property
    def agreement_rate(self) -> float:
        """Probability that ``cue == label`` for an item of this split (0 for the test split)."""
        return 0.0 if self.conflicting else agreement_rate(self.bias, self.num_classes)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        i = _normalize_index(index, self.num_samples)
        g = _item_generator(_TOKENS_STREAM, self.seed, self.split, i)
        k = self.num_classes
        u = torch.rand(5, generator=g, dtype=torch.float64).tolist()
        label = min(int(u[0] * k), k - 1)
        cue = _draw_cue(label, k, self.bias, self.conflicting, u[1], u[2])
        span = self.seq_len - self.min_length + 1
        length = self.min_length + min(int(u[3] * span), span - 1)
        num_rationale = 1 + min(int(u[4] * self.max_rationale), self.max_rationale - 1)

        content = length - 2
        tokens = torch.randint(self.noise_start, self.vocab_size, (content,), generator=g)
        slots = torch.randperm(content, generator=g)[: num_rationale + 1]
        choice = torch.randint(0, self.rationale_per_class, (num_rationale,), generator=g)
        tokens[slots[:num_rationale]] = self.rationale_token_ids[label, choice]
        tokens[slots[num_rationale]] = self.cue_start + cue

        input_ids = torch.full((self.seq_len,), PAD_TOKEN_ID, dtype=torch.int64)
        input_ids[0] = CLS_TOKEN_ID
        input_ids[1 : 1 + content] = tokens
        input_ids[1 + content] = SEP_TOKEN_ID
        rationale_mask = torch.zeros(self.seq_len, dtype=torch.bool)
        rationale_mask[1 + slots[:num_rationale]] = True
        return {
            "input_ids": input_ids,
            "attention_mask": (self._positions < length).to(torch.int64),
            "rationale_mask": rationale_mask,
            "label": torch.tensor(label, dtype=torch.int64),
            "cue": torch.tensor(cue, dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
        }

    def predict_by_rule(self, input_ids: Tensor) -> Tensor:
        """Class whose rationale tokens are most frequent in each sequence; -1 where there are none.

        This reads the generating rule back: it is right on every generated item, and shows what a
        model that uses the rationale tokens (and nothing else) would predict for edited inputs.
        Accepts ``(L,)`` or ``(B, L)`` and returns ``()`` or ``(B,)`` int64.
        """
        check_tensor("input_ids", input_ids, ndim=(1, 2))
        if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
            raise TypeError(f"`input_ids` must be an integer tensor, got dtype {input_ids.dtype}")
        ids = input_ids if input_ids.ndim == 2 else input_ids[None]
        is_rationale = (ids >= self.rationale_start) & (ids < self.noise_start)
        owner = ((ids - self.rationale_start).clamp(min=0) // self.rationale_per_class).clamp(
            max=self.num_classes - 1
        )
        counts = torch.zeros(ids.shape[0], self.num_classes, dtype=torch.int64, device=ids.device)
        counts.scatter_add_(1, owner, is_rationale.to(torch.int64))
        pred = torch.where(counts.sum(1) > 0, counts.argmax(1), torch.full_like(counts[:, 0], -1))
        return pred if input_ids.ndim == 2 else pred[0]


class TokensDataModule(SyntheticDataModule):
    """Train, val and bias-conflicting test splits of :class:`TokensDataset`.

    ``train`` and ``val`` follow ``bias``; ``test`` (also used for ``predict``) is always
    bias-conflicting: its cue token never matches the label. The vocabulary attributes
    (``vocab_size``, ``pad_token_id``, ...) are those of the datasets, for building the encoder.

    Example:
        >>> dm = TokensDataModule(batch_size=4, seq_len=16, train_size=8, val_size=4, test_size=4)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch["input_ids"].shape, batch["attention_mask"].dtype, dm.vocab_size
        (torch.Size([4, 16]), torch.int64, 256)
    """

    pad_token_id = PAD_TOKEN_ID
    cls_token_id = CLS_TOKEN_ID
    sep_token_id = SEP_TOKEN_ID
    mask_token_id = MASK_TOKEN_ID

    def __init__(
        self,
        batch_size: int = 32,
        num_classes: int = 4,
        seq_len: int = 32,
        min_length: int = 8,
        vocab_size: int = 256,
        rationale_per_class: int = 4,
        max_rationale: int = 3,
        bias: float | None = None,
        train_size: int = 2000,
        val_size: int = 500,
        test_size: int = 500,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self._build_splits(
            TokensDataset,
            batch_size=batch_size,
            num_workers=num_workers,
            sizes={"train": train_size, "val": val_size, "test": test_size},
            num_classes=num_classes,
            seq_len=seq_len,
            min_length=min_length,
            vocab_size=vocab_size,
            rationale_per_class=rationale_per_class,
            max_rationale=max_rationale,
            bias=bias,
            seed=seed,
        )
        self.save_hyperparameters()

    @property
    def vocab_size(self) -> int:
        return self.datasets["train"].vocab_size

    @property
    def seq_len(self) -> int:
        return self.datasets["train"].seq_len
