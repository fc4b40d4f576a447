"""Synthetic audio-video QA: determinism, layout, rendered content matching the answer,
uniform answers, no single-modality leakage, collate and ablate."""

from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from mirasol.data import ByteTokenizer
from mirasol.data.synthetic import (ABLATIONS, ANSWERS, AUXILIARY_KINDS, COLOURS, PITCHES,
                                    QUESTION_KINDS, SPLITS, SyntheticAVQA, SyntheticConfig,
                                    ablate, collate, make_events, make_example)
from mirasol.model import Mirasol
from mirasol.model.config import preset
from mirasol.model.partition import chunk_layout

DEFAULT = SyntheticConfig()
CONFIGS = {
    "default": DEFAULT,
    "blank-chunks": SyntheticConfig(num_chunks=6, kinds=QUESTION_KINDS + AUXILIARY_KINDS),
    # 4 frames at 3 fps: 10666.7 samples per chunk, so adjacent windows overlap by one.
    "fractional": SyntheticConfig(fps=3.0, image_size=24, shape_size=6),
}


def _measured_colour(frames: torch.Tensor) -> str | None:
    """The palette colour nearest the mean of the saturated pixels of frames (N, 3, H, W);
    None when there are none."""
    pixels = frames.permute(0, 2, 3, 1).reshape(-1, 3)
    saturated = pixels[pixels.amax(1) - pixels.amin(1) > 0.5]
    if len(saturated) < 8:
        return None
    mean = saturated.mean(0)
    return min(COLOURS, key=lambda c: float((mean - torch.tensor(COLOURS[c])).norm()))


def _measured_pitch(window: np.ndarray, sample_rate: int) -> tuple[str | None, float]:
    """The named pitch at the window's FFT peak (None if it is not within 2 bins of one) and
    the fraction of the window's energy within 50 Hz of that peak."""
    power = np.abs(np.fft.rfft(window)) ** 2
    freqs = np.fft.rfftfreq(len(window), 1 / sample_rate)
    peak = freqs[power.argmax()]
    name = min(PITCHES, key=lambda p: abs(PITCHES[p] - peak))
    near = abs(PITCHES[name] - peak) <= 2 * sample_rate / len(window)
    return (name if near else None), power[np.abs(freqs - peak) <= 50].sum() / power.sum()


def _asked(question: str) -> tuple[str | None, str | None]:
    """The colour and the pitch the question names (None where it names none)."""
    words = question.rstrip("?").split()
    return (next((w for w in words if w in COLOURS), None),
            next((w for w in words if w in PITCHES), None))


def _answer(question: str, colours: list, pitches: list) -> str:
    """The answer from the question text and per-chunk colours and pitches."""
    ordinals = ("first", "second", "third", "fourth")
    if ordinal := next((w for w in question.split() if w in ordinals), None):
        active = [t for t, c in enumerate(colours) if c is not None]
        chunk = active[ordinals.index(ordinal)]
        return colours[chunk] if "colour" in question else pitches[chunk]
    colour, pitch = _asked(question)
    if pitch is None:
        return pitches[colours.index(colour)]
    if colour is None:
        return colours[pitches.index(pitch)]
    return "yes" if colours[pitches.index(pitch)] == colour else "no"


def test_deterministic_and_splits_differ():
    a, b = make_example(DEFAULT, 3, "val", 17), make_example(DEFAULT, 3, "val", 17)
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    assert (a.question, a.answer, a.kind, a.events) == (b.question, b.answer, b.kind, b.events)
    others = [make_example(DEFAULT, 3, s, 17) for s in SPLITS if s != "val"]
    others += [make_example(DEFAULT, 4, "val", 17), make_example(DEFAULT, 3, "val", 18)]
    for other in others:
        assert not torch.equal(a.video, other.video) and not torch.equal(a.audio, other.audio)


@pytest.mark.parametrize("name", CONFIGS)
def test_layout_dtypes_and_ranges(name):
    config = CONFIGS[name]
    layout = chunk_layout(config.num_frames, config.frames_per_chunk, config.fps,
                          config.sample_rate)
    for i in range(5):
        e = make_example(config, 0, "train", i)
        size = config.image_size
        assert e.video.shape == (config.num_frames, 3, size, size)
        assert e.audio.shape == (layout.required_samples,)
        assert e.video.dtype == e.audio.dtype == torch.float32
        assert 0 <= e.video.min() and e.video.max() <= 1
        assert -1 <= e.audio.min() and e.audio.max() <= 1
        assert e.answer in ANSWERS[e.kind]


@pytest.mark.parametrize("name", CONFIGS)
def test_rendered_content_gives_the_answer(name):
    """Colours measured from the pixels and pitches from each chunk's audio window (not the
    metadata) are the events, each tone's energy is confined to its chunk, blank chunks
    are blank, and the answer follows from the measured content."""
    config = CONFIGS[name]
    layout = chunk_layout(config.num_frames, config.frames_per_chunk, config.fps,
                          config.sample_rate)
    fpc, spc = config.frames_per_chunk, layout.samples_per_chunk
    for i in range(40):
        e = make_example(config, 0, "test", i)
        colours = [_measured_colour(e.video[t * fpc:(t + 1) * fpc])
                   for t in range(config.num_chunks)]
        pitches, confined = [], []
        for start in layout.audio_starts:
            window = e.audio[start:start + spc].double().numpy()
            pitch, fraction = _measured_pitch(window, config.sample_rate)
            # Noise alone (std 0.01) has ~1e-4 the energy of the quietest tone.
            pitches.append(pitch if (window ** 2).mean() > 1e-2 else None)
            confined.append(fraction)
        assert colours == e.events["colours"] and pitches == e.events["pitches"]
        assert all(f > 0.95 for f, p in zip(confined, pitches) if p is not None), confined
        assert sum(c is None for c in colours) == config.num_chunks - len(COLOURS)
        assert _answer(e.question, colours, pitches) == e.answer
        if e.kind in QUESTION_KINDS:
            named = _asked(e.question)
            t = e.events["chunk"]
            assert (colours[t] if e.kind == "tone_during_colour" else pitches[t]) in named


def _events(kind: str, n: int, num_chunks: int = 4) -> list[dict]:
    config = SyntheticConfig(num_chunks=num_chunks, kinds=(kind,))
    return [make_events(config, 0, "train", i) for i in range(n)]


@pytest.mark.parametrize("kind", ANSWERS)
def test_answers_are_uniform(kind):
    events = _events(kind, 2000)
    assert {e["kind"] for e in events} == {kind}
    counts = Counter(e["answer"] for e in events)
    chance = 1 / len(ANSWERS[kind])
    assert set(counts) == set(ANSWERS[kind])
    assert all(abs(c / len(events) - chance) < 0.05 for c in counts.values()), counts


def _context(e: dict, mode: str) -> tuple:
    """What the question text and the modality or modalities kept by ``mode`` reveal."""
    visible = {"text-only": (), "video-only": (tuple(e["colours"]),),
               "audio-only": (tuple(e["pitches"]),),
               "full": (tuple(e["colours"]), tuple(e["pitches"]))}[mode]
    return (e["question"], *visible)


def _leakage(events: list[dict], mode: str) -> tuple[bool, bool]:
    """Whether the answer is a function of what ``mode`` reveals, and whether it is
    detectably not uniform given it: chi-square against uniform, summed over contexts,
    above its mean by 5 sd, or the best table predictor fitted on half the examples
    beating chance by 4 sd on the other half."""
    answers = ANSWERS[events[0]["kind"]]
    chance = 1 / len(answers)
    table: dict[tuple, Counter] = defaultdict(Counter)
    for e in events:
        table[_context(e, mode)][e["answer"]] += 1
    chi2 = sum((c[a] - sum(c.values()) * chance) ** 2 / (sum(c.values()) * chance)
               for c in table.values() for a in answers)
    dof = len(table) * (len(answers) - 1)
    half = len(events) // 2
    fitted: dict[tuple, Counter] = defaultdict(Counter)
    for e in events[:half]:
        fitted[_context(e, mode)][e["answer"]] += 1
    test = events[half:]
    hits = sum((fitted[_context(e, mode)].most_common(1) or [(answers[0],)])[0][0]
               == e["answer"] for e in test)
    sd = (chance * (1 - chance) / len(test)) ** 0.5
    leaks = chi2 > dof + 5 * (2 * dof) ** 0.5 or hits / len(test) > chance + 4 * sd
    return all(len(c) == 1 for c in table.values()), leaks


@pytest.mark.parametrize("num_chunks", [4, 5])
@pytest.mark.parametrize("kind", QUESTION_KINDS)
def test_no_single_modality_leakage(kind, num_chunks):
    """For every fixed question and fixed events of one modality the answer is uniform;
    both modalities together determine it."""
    events = _events(kind, 8000, num_chunks)
    assert _leakage(events, "full")[0]
    for mode in ("video-only", "audio-only", "text-only"):
        assert not _leakage(events, mode)[1], mode


@pytest.mark.parametrize("kind", AUXILIARY_KINDS)
def test_auxiliary_kinds_are_single_modality(kind):
    """The leakage check's positive control: one modality determines these answers."""
    events = _events(kind, 4000)
    answering = "video-only" if kind == "colour_at" else "audio-only"
    determined, leaks = _leakage(events, answering)
    assert determined and leaks
    for mode in {"video-only", "audio-only", "text-only"} - {answering}:
        assert not _leakage(events, mode)[1], mode


def test_collate_and_answer_mask():
    tok = ByteTokenizer()
    examples = [make_example(DEFAULT, 0, "train", i) for i in range(5)]
    batch = collate(examples, tok)
    layout = chunk_layout(DEFAULT.num_frames, DEFAULT.frames_per_chunk, DEFAULT.fps,
                          DEFAULT.sample_rate)
    assert batch["video"].shape == (5, DEFAULT.num_frames, 3, 32, 32)
    assert batch["audio"].shape == (5, layout.required_samples)
    assert batch["answers"] == [e.answer for e in examples]
    assert batch["kinds"] == [e.kind for e in examples]
    for row, e in enumerate(examples):
        length, prompt_length = batch["text_lengths"][row], batch["prompt_lengths"][row]
        answer = [*tok.encode(e.answer), tok.EOS]
        assert batch["text"][row][batch["answer_mask"][row]].tolist() == answer
        assert int(batch["answer_mask"][row].sum()) == len(answer) == length - prompt_length
        assert batch["prompt"][row, :prompt_length].tolist() == tok.prompt(e.question)
        assert (batch["text"][row, length:] == tok.PAD).all()
        assert tok.decode(batch["text"][row, prompt_length:]) == e.answer
        assert batch["text"][row, :prompt_length].tolist() == tok.prompt(e.question)


def test_ablate_zeroes_exactly_the_removed_modality():
    batch = collate([make_example(DEFAULT, 0, "train", i) for i in range(2)])
    kept = {"full": ("video", "audio"), "video-only": ("video",), "audio-only": ("audio",),
            "text-only": ()}
    for mode in ABLATIONS:
        out = ablate(batch, mode)
        assert out.keys() == batch.keys()
        for key in batch:
            if key in ("video", "audio") and key not in kept[mode]:
                assert out[key].shape == batch[key].shape and not out[key].any()
            else:
                assert out[key] is batch[key]
    assert batch["video"].any() and batch["audio"].any()
    with pytest.raises(ValueError, match="mode"):
        ablate(batch, "silent")


def test_dataset_config_and_model_batch():
    tiny = preset("tiny")
    config = SyntheticConfig.for_model(tiny)
    assert config == DEFAULT
    data = SyntheticAVQA(config, "val", size=3, seed=1)
    assert len(data) == 3 and torch.equal(data[2].video, make_example(config, 1, "val", 2).video)
    with pytest.raises(IndexError):
        data[3]
    for bad in (dict(num_chunks=3), dict(kinds=("why",)), dict(kinds=()),
                dict(sample_rate=4000)):
        with pytest.raises(ValueError):
            SyntheticConfig(**bad)
    with pytest.raises(ValueError, match="audio"):
        SyntheticConfig.for_model(tiny.replace(audio=None))
    with pytest.raises(ValueError, match="split"):
        SyntheticAVQA(config, "dev", 3)
    # The batch is the tiny model's input as is, ablated or not.
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=3, collate_fn=collate)))
    model = Mirasol(tiny, backend="torch").eval()
    for mode in ("full", "text-only"):
        b = ablate(batch, mode)
        with torch.no_grad():
            out = model(b["video"], b["audio"], b["text"], answer_mask=b["answer_mask"],
                        text_lengths=b["text_lengths"])
        assert torch.isfinite(out.loss)
