"""The AudioCLIP model in PyTorch: config, towers, and the whole model."""
from .audioclip import AudioCLIP
from .config import AudioCLIPConfig, AudioConfig, ImageConfig, TextConfig

__all__ = ["AudioCLIP", "AudioCLIPConfig", "AudioConfig", "ImageConfig", "TextConfig"]
