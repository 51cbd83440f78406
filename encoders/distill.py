"""Distilling a teacher into a DiPair student, in plain PyTorch: the loss, the stage plan and the
trainer (DiPair §3.7, §4.3-4.4). ``jobs.train_student`` reads the data and runs a :class:`Trainer`
on its settings' distillation concern (:class:`DistillConfig`, ``encoders/distill_config.py``:
every field a flag, declared once); nothing here reads a job.

* Stage 1 -- encoder frozen: projection + head train on the stage-one state cache
  (``encoders/frozen_states.py``), early stop on dev.
* Stage 2 -- everything trains, the encoder at a lower learning rate; each batch encodes its
  unique texts once. With ``train_layers = k`` only the top k encoder layers train (with the
  projection and head), on the frozen lower layers' outputs computed once per unique text
  (``encoders/layer_cache.py``, float16), in length-bucketed batches.
* VIRT (``virt_weight`` > 0, ``encoders/virt.py``): wherever the encoder trains, each batch also
  runs the teacher over its pairs and adds ``virt_weight`` x the distance between the teacher's
  cross attention maps and the trained layers' virtual ones to the loss.
* Dev is evaluated after every epoch of both stages (with dev groups also MRR@10, MAP and nDCG@10
  per query, ``encoders/ranking_metrics.py``); the best epoch of the whole run, by
  ``select_metric``, is saved.

Shapes: P pairs, B pairs in a batch, C outputs (1, or k classes), U unique texts of a pool.
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from encoders.checkpoint import Student, save_student
from encoders.choices import STUDENT_LOSSES, TRAINABLE_HEADS  # noqa: F401  (TRAINABLE_HEADS re-exported)
from encoders.config import SIDES, StudentConfig
from encoders.distill_config import DistillConfig  # noqa: F401  (re-exported: encoders.distill.DistillConfig)
from encoders.device import autocast, grad_scaler
from encoders.frozen_states import FrozenStates
from encoders.inference import Pairs, encode_pool, pair_logits
from encoders.layer_cache import LowerStates, encoder_layers, upper_forward, upper_parameters
from encoders.metrics import selection_score, task_metrics
from encoders.ranking_metrics import rank_queries
from encoders.sources import load_config
from encoders.teacher import TeacherTask
from encoders.progress import Bars
from encoders.training import EpochProgress, length_grouped_batches, make_adamw, optimizer_step
from encoders.virt import Virt, gather_rows
from encoders.errors import FlagError, ModelError, UsageError

LOSSES = STUDENT_LOSSES
# Training pairs whose cosines calibrate the cosine skip when no stage-1 cache has them all.
COSINE_FIT_PAIRS = 8192


@dataclass
class Examples:
    """What the student trains on: pairs and their targets (P each; see ``pipeline.datasets.DistillationSet``)."""
    pairs: Pairs
    soft: torch.Tensor                      # (P, C) float32
    logits: torch.Tensor | None             # (P, C) float32
    human: torch.Tensor                     # (P,) float32, NaN = no human label

    @classmethod
    def of(cls, data, swap: bool) -> "Examples":
        """``data``: the rows read (``pipeline.datasets.DistillationSet``: lefts, rights, soft,
        logits, human). With ``swap`` every pair is added again with its texts exchanged
        (symmetric tasks)."""
        lefts, rights = data.lefts, data.rights
        soft = torch.tensor(data.soft, dtype=torch.float32).reshape(len(data.soft), -1)
        logits = (torch.tensor(data.logits, dtype=torch.float32).reshape(len(data.soft), -1)
                  if data.logits is not None else None)
        human = torch.tensor(data.human, dtype=torch.float32)
        if swap:
            lefts, rights = lefts + rights, rights + lefts
            soft, human = soft.repeat(2, 1), human.repeat(2)
            logits = logits.repeat(2, 1) if logits is not None else None
        return cls(Pairs.of(lefts, rights), soft, logits, human)


# --------------------------------------------------------------------------- loss

def distillation_loss(logits: torch.Tensor, soft: torch.Tensor, teacher_logits: torch.Tensor | None,
                      human: torch.Tensor, human_weight: float, loss: str = "ce") -> torch.Tensor:
    """The mean loss of a batch (a scalar, float32).

    logits (B, C) student; soft (B, C) teacher soft labels; teacher_logits (B, C) (``mse`` only);
    human (B,) human targets, NaN where a pair has none; human_weight w in [0, 1].

    Per pair: ``(1 - w_i) * distill_i + w_i * human_i`` with ``w_i = w`` where the pair has a human
    label, else 0, and

    * distill_i, ``ce`` (DiPair eq. 1): C = 1: ``-(p log sigmoid(z) + (1 - p) log(1 - sigmoid(z)))``;
      C = k: ``-sum_c p_c log softmax(z)_c``;
    * distill_i, ``mse``: ``mean_c (z_c - z_teacher_c)^2``;
    * human_i: the same cross-entropy with the human target (0/1, a grade in [0, 1], or a class).
    """
    logits = logits.float()
    if loss == "ce":
        distill = _cross_entropy(logits, soft.float())
    elif loss == "mse":
        if teacher_logits is None:
            raise FlagError("--loss mse needs the teacher's logits; this distillation set has none")
        distill = ((logits - teacher_logits.float()) ** 2).mean(dim=1)
    else:
        raise ValueError(f"loss {loss!r} is not allowed: choose one of {', '.join(LOSSES)}")
    has_human = ~torch.isnan(human)
    if human_weight == 0 or not bool(has_human.any()):
        return distill.mean()
    target = torch.where(has_human, human, torch.zeros_like(human))
    if logits.shape[1] == 1:
        human_loss = _cross_entropy(logits, target[:, None])
    else:
        human_loss = F.cross_entropy(logits, target.long(), reduction="none")
    weight = has_human.float() * human_weight
    return ((1 - weight) * distill + weight * human_loss).mean()


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C) logits and target probabilities -> (B,) cross-entropy (binary when C = 1)."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], target[:, 0], reduction="none")
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)


def loss_floor(soft: torch.Tensor, human: torch.Tensor, human_weight: float) -> float:
    """The lowest mean ``ce`` loss any student can reach on these targets: the mean entropy of each
    pair's target distribution (cross-entropy is linear in the target, so mixing the losses equals
    mixing the targets). A training loss far above it means the student underfits."""
    target = soft.double()
    has_human = ~torch.isnan(human)
    if human_weight and bool(has_human.any()):
        if soft.shape[1] == 1:
            hard = torch.where(has_human, human, torch.zeros_like(human)).double()[:, None]
        else:
            hard = F.one_hot(torch.where(has_human, human, torch.zeros_like(human)).long(), soft.shape[1]).double()
        weight = (has_human.double() * human_weight)[:, None]
        target = (1 - weight) * target + weight * hard
    if target.shape[1] == 1:
        target = torch.cat([target, 1 - target], dim=1)
    entropy = -(target * torch.log(target.clamp(min=1e-300))).sum(dim=1)
    return float(entropy.mean())


# --------------------------------------------------------------------------- training

@dataclass
class Stage:
    """One phase of training: which parameters learn, at which rates, for how long."""
    name: str                                   # "stage1" | "stage2" | "one_stage"
    description: str
    frozen_encoder: bool
    epochs: int
    batch_size: int
    groups: list[tuple[list[tuple[str, torch.nn.Parameter]], float]]   # (named parameters, lr)
    patience: int | None = None
    max_pairs: int | None = None
    lower_cache: bool = False        # the encoder's lower layers are frozen and read from Trainer.lower


def plan_stages(student: Student, config: DistillConfig) -> list[Stage]:
    """``--stages 2``: stage 1 trains projection + head with the encoder frozen (early stop on dev),
    stage 2 trains everything, the encoder at ``--encoder-lr`` (no stage 2 with ``--stage2-epochs
    0``). ``--stages 1``: everything from the first step, head at ``--lr`` (it starts from random
    weights) and encoder at ``--encoder-lr``."""
    encoder = _named_encoder_parameters(student)
    encoder_ids = {id(p) for _, p in encoder}
    rest = [(n, p) for n, p in student.named_parameters() if id(p) not in encoder_ids]
    if config.stages == 1:
        return [Stage("one_stage", "one stage: everything trains", False, config.stage2_epochs, config.batch_size,
                      [(rest, config.lr), (encoder, config.encoder_lr)], max_pairs=config.stage2_max_pairs)]
    stage1 = Stage("stage1", "stage 1: encoder frozen", True, config.stage1_epochs, config.stage1_batch_size,
                   [(rest, config.lr)], patience=config.patience, max_pairs=config.stage1_max_pairs)
    if config.stage2_epochs == 0:
        return [stage1]                  # the frozen-encoder student: no stage 2
    if config.train_layers is not None:
        upper = _unique_parameters([(f"{side}.{name}", p) for side in SIDES
                                    for name, p in upper_parameters(student.encoder.side(side), config.train_layers)])
        return [stage1, Stage("stage2", f"stage 2: top {config.train_layers} encoder layers train", False,
                              config.stage2_epochs, config.batch_size, [(rest, config.stage2_lr),
                                                                         (upper, config.encoder_lr)],
                              max_pairs=config.stage2_max_pairs, lower_cache=True)]
    return [stage1, Stage("stage2", "stage 2: everything trains", False, config.stage2_epochs, config.batch_size,
                          [(rest, config.stage2_lr), (encoder, config.encoder_lr)], max_pairs=config.stage2_max_pairs)]


def _unique_parameters(named: list[tuple[str, torch.nn.Parameter]]) -> list[tuple[str, torch.nn.Parameter]]:
    """Each parameter once (a shared encoder is one module on both sides)."""
    seen, unique = set(), []
    for name, parameter in named:
        if id(parameter) not in seen:
            seen.add(id(parameter))
            unique.append((name, parameter))
    return unique


def _named_encoder_parameters(student: Student) -> list[tuple[str, torch.nn.Parameter]]:
    """The transformer weights, each once (a shared encoder is one module on both sides)."""
    seen, named = set(), []
    for side in SIDES:
        for name, parameter in student.encoder.side(side).transformer.named_parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                named.append((f"{side}.{name}", parameter))
    return named


@dataclass
class Trainer:
    """The run's data and state: the student, how it is distilled, the examples, dev, where the best
    epoch goes. Reads a DistillConfig, never a config."""
    student: Student
    config: DistillConfig
    task: TeacherTask
    device: str
    examples: Examples
    dev: Pairs
    dev_targets: np.ndarray
    cache: FrozenStates | None = None
    lower: dict[str, LowerStates] | None = None   # side -> its lower-layer cache (train_layers)
    dev_groups: np.ndarray | None = None          # (P_dev,) dev's query of each pair (--dev-group-col)
    virt: Virt | None = None                       # VIRT's teacher and maps (--virt-weight > 0)
    best_score: tuple[float, float] | None = None
    best: dict[str, Any] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_dir: str | None = None   # where the best epoch is saved (staged; committed at the end)
    bars: Bars = None                     # the job's progress callback (encoders/progress.py); None: no bars

    def train_stage(self, stage: Stage, rng: random.Random) -> list[dict[str, Any]]:
        """Run one stage; returns its epoch records. Ends with the stage's best weights loaded."""
        config, student = self.config, self.student
        # The encoder weights this stage trains (none in stage 1, the top k with train_layers).
        training = {id(p) for named, _ in stage.groups for _, p in named}
        for _, parameter in _named_encoder_parameters(student):
            parameter.requires_grad_(id(parameter) in training)
        # VIRT acts where the encoder trains: its loss needs the trained layers' inputs.
        virt = self.virt is not None and not stage.frozen_encoder
        if stage.lower_cache:
            rows = {side: self.lower[side].rows_of(self.examples.pairs.pools[side])[self.examples.pairs.index[side]]
                    for side in SIDES}
            forward = lambda index: self._upper_and_score({s: r[index] for s, r in rows.items()})
            if virt:
                ids = {side: [t.ids for t in student.encoder.side(side).tokenize(self.examples.pairs.pools[side])]
                       for side in SIDES}
                forward = lambda index: self._with_virt(
                    index, ids, lambda collect: self._upper_and_score({s: r[index] for s, r in rows.items()},
                                                                      collect))
            lengths = (self.lower["left"].lengths.numpy()[rows["left"]]
                       + self.lower["right"].lengths.numpy()[rows["right"]]).tolist()
        elif stage.frozen_encoder:
            rows = self.cache.pair_rows(self.examples.pairs)
            forward = lambda index: self.cache.logits(student, {s: r[index] for s, r in rows.items()}, self.device)
            # Cached states all have N / M tokens: nothing to group by length.
            lengths = [0] * len(self.examples.pairs)
        else:
            tokenized = {side: student.encoder.side(side).tokenize(self.examples.pairs.pools[side]) for side in SIDES}
            forward = lambda index: self._encode_and_score(tokenized, index)
            if virt:
                ids = {side: [t.ids for t in tokenized[side]] for side in SIDES}
                forward = lambda index: self._with_virt(
                    index, ids, lambda collect: self._encode_and_score(tokenized, index, collect))
            lengths = self._lengths(tokenized)
        batches = length_grouped_batches(lengths, stage.batch_size, random.Random(0))
        steps_per_epoch = len(first_pairs(batches, stage.max_pairs) if stage.max_pairs is not None else batches)
        total_steps = steps_per_epoch * stage.epochs
        optimizer = make_adamw(stage.groups, config.weight_decay)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup * total_steps), total_steps)
        scaler = grad_scaler(self.device)
        parameters = [p for named, _ in stage.groups for _, p in named]
        stage_records, stage_best, bad_epochs = [], None, 0
        stage_best_state = None
        for epoch in range(1, stage.epochs + 1):
            batches = length_grouped_batches(lengths, stage.batch_size, rng)
            if stage.max_pairs is not None:
                batches = first_pairs(batches, stage.max_pairs)
            record = {"stage": stage.name, "epoch": epoch, **self._train_epoch(
                forward, batches, optimizer, scheduler, scaler, parameters,
                f"{stage.description}, epoch {epoch}/{stage.epochs}")}
            evaluated = time.perf_counter()
            logits = self._dev_logits(stage.frozen_encoder, stage.lower_cache)
            record["dev"] = task_metrics(self.task, logits, self.dev_targets)
            if self.dev_groups is not None:
                scores, _ = student.scores_from_logits(torch.from_numpy(logits))
                record["dev"].update(rank_queries(scores.numpy(), self.dev_targets, self.dev_groups).means())
            record["dev_seconds"] = round(time.perf_counter() - evaluated, 1)
            score = selection_score(self.task, record["dev"], config.select_metric)
            if self.best_score is None or score > self.best_score:
                self.best_score, self.best, self.best_state = score, record, _copy_state(student)
                save_student(student, self.checkpoint_dir)   # the best epoch so far is always on disk
            record["best_so_far"] = self.best is record
            if stage_best is None or score > stage_best:
                stage_best, bad_epochs = score, 0
                stage_best_state = _copy_state(student)
            else:
                bad_epochs += 1
            stage_records.append(record)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in record["dev"].items())
            tqdm.write(f"{stage.description}, epoch {epoch}: train loss {record['train_loss']:.4f} "
                       f"({record['pairs_per_second']:.1f} pairs/s); dev {shown}"
                       f"{' (best, saved)' if self.best is record else ''}", file=sys.stderr)
            if stage.patience is not None and bad_epochs >= stage.patience:
                record["early_stop"] = True
                tqdm.write(f"{stage.description}: dev did not improve for {bad_epochs} epochs, stopping early",
                           file=sys.stderr)
                break
        # The next stage starts from this stage's best epoch, not its last (DiPair: stage 1 "until convergence").
        student.load_state_dict(stage_best_state)
        self.records += stage_records
        return stage_records

    def _lengths(self, tokenized: dict[str, list]) -> list[int]:
        """Per example, what length grouping sorts by: the two texts' token counts."""
        pairs = self.examples.pairs
        counts = {side: np.array([t.num_tokens for t in tokenized[side]], dtype=np.int64) for side in SIDES}
        return (counts["left"][pairs.index["left"]] + counts["right"][pairs.index["right"]]).tolist()

    def _encode_and_score(self, tokenized: dict[str, list], index: np.ndarray,
                          collect: dict[str, list[torch.Tensor]] | None = None) -> torch.Tensor:
        """A batch of pair indices -> logits (B, C), encoding each unique text of the batch once.
        ``collect`` (VIRT): gets side -> the states entering each encoder layer, (B, T, H) per pair."""
        sides, pooled = {}, {}
        for side in SIDES:
            unique, inverse = np.unique(self.examples.pairs.index[side][index], return_inverse=True)
            encoder = self.student.encoder.side(side)
            batch = encoder.collate([tokenized[side][i] for i in unique]).to(self.device)
            back = torch.from_numpy(inverse.reshape(-1)).to(self.device)
            if collect is None:
                encoded = encoder(batch.input_ids, batch.attention_mask)
            else:
                # The same forward, also returning each layer's input (hidden_states[l] enters layer l).
                output = encoder.transformer(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                             output_hidden_states=True)
                encoded = encoder.from_states(output.last_hidden_state, batch.attention_mask)
                collect[side] = gather_rows(output.hidden_states[:-1], back)
            sides[side] = (encoded.tokens[back], encoded.mask[back])
            pooled[side] = encoded.pooled[back] if encoded.pooled is not None else None
        return self.student.score_tokens(*sides["left"], *sides["right"], pooled["left"], pooled["right"])

    def _upper_and_score(self, rows: dict[str, np.ndarray],
                         collect: dict[str, list[torch.Tensor]] | None = None) -> torch.Tensor:
        """Lower-layer cache rows of a batch (side -> (B,)) -> logits (B, C): the top k layers,
        projection and head, each unique text of the batch run once. ``collect`` (VIRT): gets
        side -> the states entering each of the top k layers, (B, T, H) per pair."""
        sides, pooled = {}, {}
        for side in SIDES:
            unique, inverse = np.unique(rows[side], return_inverse=True)
            states, mask = self.lower[side].batch(unique, self.device)
            inputs = [] if collect is not None else None
            encoded = upper_forward(self.student.encoder.side(side), states, mask, self.config.train_layers, inputs)
            back = torch.from_numpy(inverse.reshape(-1)).to(self.device)
            if collect is not None:
                collect[side] = gather_rows(inputs, back)
            sides[side] = (encoded.tokens[back], encoded.mask[back])
            pooled[side] = encoded.pooled[back] if encoded.pooled is not None else None
        return self.student.score_tokens(*sides["left"], *sides["right"], pooled["left"], pooled["right"])

    def _with_virt(self, index: np.ndarray, ids: dict[str, list[list[int]]],
                   forward: Callable[[dict[str, list[torch.Tensor]]], torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of pair indices -> (logits (B, C), the VIRT loss): ``forward(collect)`` scores the
        batch and collects the trained layers' inputs; the teacher reads the same pairs (no
        gradients). ``ids``: side -> the towers' token ids of each pool text."""
        collect: dict[str, list[torch.Tensor]] = {}
        logits = forward(collect)
        pairs, virt = self.examples.pairs, self.virt
        at = {side: pairs.index[side][index].reshape(-1) for side in SIDES}
        texts = {side: [pairs.pools[side][i] for i in at[side]] for side in SIDES}
        token_ids = {side: [ids[side][i] for i in at[side]] for side in SIDES}
        maps, alignment = virt.teacher_maps(texts["left"], texts["right"], token_ids["left"], token_ids["right"],
                                            collect["left"][0].shape[1], collect["right"][0].shape[1], self.device)
        layers = {side: encoder_layers(self.student.encoder.side(side)) for side in SIDES}
        # The collected inputs are those of the layers this stage runs: all of them, or the top k.
        first = len(layers["left"]) - len(collect["left"])
        chosen = [s - first for s in virt.trained]
        loss = virt.loss(layers["left"], layers["right"], [collect["left"][s] for s in chosen],
                         [collect["right"][s] for s in chosen], maps, alignment)
        return logits, loss

    def fit_cosine_skip(self, sample: int = COSINE_FIT_PAIRS) -> dict[str, Any]:
        """Calibrate the cosine skip to the teacher before training (heads/cosine_skip.py): the
        logistic fit of the soft labels on the pooled-embedding cosine of up to ``sample`` training
        pairs (all of them come free from the stage-1 cache; otherwise a sample is encoded)."""
        pairs, head = self.examples.pairs, self.student.head
        if self.cache is not None:
            chosen = np.arange(len(pairs))
            rows = self.cache.pair_rows(pairs)
            pooled = {side: self.cache.pooled_of(side, rows[side]) for side in SIDES}
        else:
            chosen = np.sort(np.random.default_rng(self.config.seed).permutation(len(pairs))[:sample])
            pooled = {}
            for side in SIDES:
                unique, inverse = np.unique(pairs.index[side][chosen], return_inverse=True)
                encoded = encode_pool(self.student.encoder.side(side), [pairs.pools[side][i] for i in unique],
                                      self.config.encode_batch_size, self.device)
                pooled[side] = encoded.pooled.cpu()[torch.from_numpy(inverse.reshape(-1))]
        cosine = F.cosine_similarity(pooled["left"], pooled["right"], dim=-1)
        head.fit_to(cosine, self.examples.soft[torch.from_numpy(chosen)])
        return {"pairs": len(chosen), "scale": head.scale.tolist(), "bias": head.bias.tolist()}

    def _train_epoch(self, forward: Callable[[np.ndarray], torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
                     batches: list[list[int]], optimizer, scheduler, scaler, parameters: list[torch.nn.Parameter],
                     description: str) -> dict[str, float]:
        """One pass over ``batches`` -> {train_loss (mean over the epoch), seconds, pairs_per_second, lr,
        and virt_loss with VIRT}. ``forward``: pair indices -> logits (B, C), or (logits, VIRT loss)."""
        self.student.train()
        examples, config, device = self.examples, self.config, self.device
        progress = EpochProgress(sum(len(b) for b in batches), description, self.bars)
        virt_total, virt_pairs = 0.0, 0
        for batch in batches:
            index = np.asarray(batch)
            rows = torch.from_numpy(index)
            with autocast(device):
                logits = forward(index)                                                  # (B, C)
            virt_loss = None
            if isinstance(logits, tuple):                                                # VIRT on
                logits, virt_loss = logits
            loss = distillation_loss(
                logits, examples.soft[rows].to(device),
                examples.logits[rows].to(device) if examples.logits is not None else None,
                examples.human[rows].to(device), config.human_label_weight, config.loss)
            if virt_loss is not None:
                loss = loss + config.virt_weight * virt_loss.float()
                virt_total += float(virt_loss.detach()) * len(index)
                virt_pairs += len(index)
            optimizer_step(loss, optimizer, scheduler, scaler, parameters, config.max_grad_norm)
            progress.update(loss, len(index), scheduler.get_last_lr()[0])
        record = progress.close()
        if virt_pairs:
            record["virt_loss"] = virt_total / virt_pairs   # train_loss includes alpha times it
        return record

    @torch.inference_mode()
    def _dev_logits(self, frozen_encoder: bool, lower_cache: bool = False) -> np.ndarray:
        """Dev logits (P, C): from the cache while the encoder is frozen, from the lower-layer cache
        while only the top layers train, else encoding the dev texts."""
        if lower_cache:
            self.student.eval()
            rows = {side: self.lower[side].rows_of(self.dev.pools[side])[self.dev.index[side]] for side in SIDES}
            # Length-sorted chunks, so each pads little.
            order = np.argsort(self.lower["left"].lengths.numpy()[rows["left"]]
                               + self.lower["right"].lengths.numpy()[rows["right"]], kind="stable")
            logits = np.zeros((len(self.dev), self.student.config.num_outputs), dtype=np.float32)
            for start in range(0, len(order), 256):
                chunk = order[start:start + 256]
                with autocast(self.device):
                    logits[chunk] = self._upper_and_score({s: r[chunk] for s, r in rows.items()}).float().cpu().numpy()
            return logits
        if not frozen_encoder:
            return pair_logits(self.student, self.dev, self.device, self.config.encode_batch_size)[0]
        self.student.eval()
        rows = self.cache.pair_rows(self.dev)
        out = []
        for start in range(0, len(self.dev), 4096):
            with autocast(self.device):
                out.append(self.cache.logits(self.student, {s: r[start:start + 4096] for s, r in rows.items()},
                                             self.device).float().cpu())
        return torch.cat(out).numpy()


    def build_lower_caches(self, cache_dir: str | None) -> None:
        """``lower``: side -> the lower-layer cache of every unique training and dev text of that side.
        With a shared encoder and equal max lengths both sides read one cache (a text on both sides
        runs once). ``cache_dir``: where the caches are kept and reused (None: in memory only)."""
        student, train, k = self.student, self.examples.pairs, self.config.train_layers
        shared = student.config.shared_encoder and student.config.left_max_length == student.config.right_max_length
        texts = {side: [*train.pools[side], *self.dev.pools[side]] for side in SIDES}
        batch = self.config.encode_batch_size
        if shared:
            both = LowerStates.build(student.encoder.left, texts["left"] + texts["right"], k, batch, self.device,
                                     cache_dir)
            self.lower = {"left": both, "right": both}
        else:
            self.lower = {side: LowerStates.build(student.encoder.side(side), texts[side], k, batch, self.device,
                                                  cache_dir) for side in SIDES}

    def cache_report(self) -> tuple[dict[str, Any], list[str]]:
        """What the state caches cost, for the run's summary: ({"stage1_cache", "lower_cache"}, notes)."""
        metrics, notes = {"stage1_cache": None, "lower_cache": None}, []
        if self.lower is not None:
            caches = list({id(c): c for c in self.lower.values()}.values())
            lower = {"train_layers": self.config.train_layers, "texts": sum(len(c.rows) for c in caches),
                     "tokens": sum(len(c.flat) for c in caches), "bytes": sum(c.bytes for c in caches),
                     "seconds": round(sum(c.seconds for c in caches), 1),
                     "reused": [c.reused for c in caches if c.reused]}
            metrics["lower_cache"] = lower
            notes.append(f"stage 2 trained the top {lower['train_layers']} encoder layers on cached lower-layer "
                         f"states: {lower['texts']:,} texts, {lower['tokens']:,} tokens, "
                         f"{lower['bytes'] / 2 ** 20:,.0f} MiB float16, {lower['seconds']:.0f} s"
                         + (", reused from --cache-dir" if lower["reused"] else ""))
        if self.cache is not None:
            cache = self.cache
            metrics["stage1_cache"] = {"texts": cache.texts, "bytes": cache.bytes,
                                       "seconds": round(cache.seconds, 1), "reused": cache.reused}
            notes.append(f"stage 1 encoded {cache.texts:,} unique texts once ({cache.bytes / 2 ** 20:,.0f} MiB of "
                         f"states, {cache.seconds:.0f} s" + (", reused from --cache-dir" if cache.reused else "") + ")")
        return metrics, notes


def first_pairs(batches: list[list[int]], count: int) -> list[list[int]]:
    """The leading batches holding ``count`` pairs in all (the last one cut short): an epoch of
    ``--stage2-max-pairs`` pairs, a new random sample each epoch since the batches are shuffled."""
    taken, total = [], 0
    for batch in batches:
        if total >= count:
            break
        taken.append(batch[:count - total])
        total += len(taken[-1])
    return taken


def _copy_state(student: Student) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


def resolve_task(name: str | None, label_range: tuple[float, float] | None, num_outputs: int,
                 from_manifest: TeacherTask | None) -> TeacherTask:
    """How dev (and human) labels are read: the task ``name`` (``--task``, with ``label_range``),
    else the distillation set's manifest, else binary for one-output sets and classes for k-output
    ones. It must give ``num_outputs`` logits."""
    if name is not None:
        task = TeacherTask(name, label_range=label_range, num_classes=num_outputs if name == "classes" else None)
    elif from_manifest is not None:
        task = from_manifest
    else:
        task = (TeacherTask("binary") if num_outputs == 1 else TeacherTask("classes", num_classes=num_outputs))
    if task.num_outputs != num_outputs:
        raise UsageError(f"task {task.task!r} needs {task.num_outputs} output(s) but the distillation set has "
                         f"{num_outputs} soft label(s) per pair")
    return task


def check_encoder(config: StudentConfig) -> None:
    """The encoder exists and has at least K layers (its config only; the weights load later)."""
    try:
        encoder_config = load_config(config.encoder)
    except OSError as err:
        raise ModelError(f"--encoder {config.encoder!r} cannot be loaded (a local Hugging Face directory or a "
                         f"cached hub id): {err}") from err
    available = encoder_config.num_hidden_layers
    if config.encoder_layers is not None and config.encoder_layers > available:
        raise FlagError(f"--layers {config.encoder_layers} is not allowed for {config.encoder!r}: it has "
                        f"{available} layers, choose 1..{available}")
