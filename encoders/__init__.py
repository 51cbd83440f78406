"""Plain-PyTorch side of stage one: the dual encoder, its tokenization and the student checkpoint.

Never imports Beam, so it can be trained, tested and benchmarked without a pipeline.
"""
from encoders.config import DEFAULT_ENCODER, StudentConfig, baseline_config
from encoders.dual_encoder import DualEncoder, EncodedSide, SideEncoder, TokenizedBatch
from encoders.checkpoint import Student, load_student, save_student

__all__ = [
    "DEFAULT_ENCODER", "StudentConfig", "baseline_config",
    "DualEncoder", "EncodedSide", "SideEncoder", "TokenizedBatch",
    "Student", "load_student", "save_student",
]
