"""ByteTokenizer: UTF-8 bytes plus PAD/BOS/SEP/EOS, question-answer layout and padding."""

import pytest
import torch

from mirasol.data import ByteTokenizer

tok = ByteTokenizer()


def test_specials_and_vocab():
    assert (tok.PAD, tok.BOS, tok.SEP, tok.EOS, tok.vocab_size) == (256, 257, 258, 259, 260)


@pytest.mark.parametrize("text", ["", "hello", "café", "日本語のテキスト", "a\x00b\n🎵"])
def test_round_trip(text):
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text


def test_encode_is_bytes():
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.encode("日本") == [0xE6, 0x97, 0xA5, 0xE6, 0x9C, 0xAC]


def test_decode_stops_at_eos_and_skips_specials():
    ids = [tok.BOS, *tok.encode("what?"), tok.SEP, *tok.encode("ok"), tok.EOS,
           *tok.encode("junk"), tok.PAD]
    assert tok.decode(ids) == "what?ok"
    assert tok.decode(torch.tensor([tok.PAD, 104, tok.PAD, 105, tok.EOS, 106])) == "hi"
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # truncated UTF-8 is replaced, not raised
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([65, 300])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))


def test_prompt_and_example_mask():
    assert tok.prompt("") == [tok.BOS, tok.SEP]
    assert tok.prompt("é?") == [tok.BOS, 0xC3, 0xA9, ord("?"), tok.SEP]
    ids, mask = tok.example("q?", "日本")
    answer = tok.encode("日本")
    assert ids == [tok.BOS, ord("q"), ord("?"), tok.SEP, *answer, tok.EOS]
    assert len(mask) == len(ids)
    assert [i for i, m in zip(ids, mask) if m] == [*answer, tok.EOS]
    assert mask == [False] * 4 + [True] * (len(answer) + 1)
    assert tok.example("", "")[1] == [False, False, True]


def test_pad():
    seqs = [[1, 2, 3], [4], []]
    ids, lengths = tok.pad(seqs)
    assert ids.dtype == lengths.dtype == torch.int64
    assert ids.tolist() == [[1, 2, 3], [4, tok.PAD, tok.PAD], [tok.PAD] * 3]
    assert lengths.tolist() == [3, 1, 0]


def test_pad_with_masks():
    examples = [tok.example("a", "bc"), tok.example("long question", "")]
    ids, lengths, mask = tok.pad([e[0] for e in examples], [e[1] for e in examples])
    assert ids.shape == mask.shape == (2, len(examples[1][0]))
    assert mask.dtype == torch.bool
    for row, (seq, m) in enumerate(examples):
        assert lengths[row] == len(seq)
        assert ids[row, :len(seq)].tolist() == seq and mask[row, :len(m)].tolist() == m
        assert (ids[row, len(seq):] == tok.PAD).all() and not mask[row, len(seq):].any()
    assert tok.decode(ids[0]) == "abc" and tok.decode(ids[1]) == "long question"


def test_pad_errors():
    with pytest.raises(ValueError, match="sequences is empty"):
        tok.pad([])
    with pytest.raises(ValueError, match="masks must match"):
        tok.pad([[1, 2]], [[True]])
