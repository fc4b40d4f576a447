"""Mirasol3B: configuration and presets, time-aligned partitioning, the per-chunk encoders,
the A/V autoregressive model, the text decoder, generation, streaming and checkpoints."""

from mirasol.model.audio import LogMelSpectrogram, mel_filterbank
from mirasol.model.checkpoint import (CheckpointError, load_checkpoint, load_state,
                                      save_checkpoint)
from mirasol.model.config import (PRESETS, AudioConfig, CombinerConfig, MirasolConfig,
                                  TextConfig, VideoConfig, preset)
from mirasol.model.mirasol import Mirasol, MirasolOutput
from mirasol.model.partition import (FPS_MAX_DENOMINATOR, ChunkLayout, chunk_layout, frame_rate,
                                     partition, partition_audio)
from mirasol.model.stream import MirasolStream

__all__ = ["FPS_MAX_DENOMINATOR", "PRESETS", "AudioConfig", "CheckpointError", "ChunkLayout",
           "CombinerConfig", "LogMelSpectrogram", "Mirasol", "MirasolConfig", "MirasolOutput",
           "MirasolStream", "TextConfig", "VideoConfig", "chunk_layout", "frame_rate",
           "load_checkpoint", "load_state", "mel_filterbank", "partition", "partition_audio",
           "preset", "save_checkpoint"]
