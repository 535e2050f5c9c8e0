"""Tiny diffusers model folders for the tests, one builder per family, each saved with save_pretrained and returning the folder.

Every builder skips the calling test when diffusers (or transformers, for text-to-image) is
missing. Weights are perturbed so that outputs are far from the zero-initialised layers'.
Shapes: pixel models take 3 x 8 x 8 images; latent models take 3 x 16 x 16 images and
denoise 8 x 8 latents (4 channels behind AutoencoderKL, 3 behind VQModel).
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

__all__ = [
    "perturb", "save_scheduler", "build_pixel_unet", "build_class_unet", "build_flow_unet", "build_latent_unet",
    "build_dit", "build_text_to_image", "build_lora", "write_clip_tokenizer", "prompt_states", "TOKENIZER_MAX_LENGTH",
]

TOKENIZER_MAX_LENGTH = 8


def _diffusers():
    return pytest.importorskip("diffusers")


def perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Add scale * N(0, 1) to every parameter (deterministic in seed)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=gen))
    return module.eval()


def save_scheduler(folder: Path, class_name: str = "DDPMScheduler", **settings) -> Path:
    """A scheduler of `class_name` saved into folder (scheduler_config.json)."""
    diffusers = _diffusers()
    getattr(diffusers, class_name)(**settings).save_pretrained(folder)
    return folder


def _model_index(root: Path, class_name: str, **components) -> None:
    entries = {"_class_name": class_name, "_diffusers_version": _diffusers().__version__}
    entries.update(components)
    (root / "model_index.json").write_text(json.dumps(entries))


def _pixel_unet(out_channels: int = 3, **extra):
    diffusers = _diffusers()
    torch.manual_seed(0)
    return perturb(diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=out_channels, block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=32, **extra))


def build_pixel_unet(root: Path, *, prediction_type: str = "epsilon", learned_variance: bool = False) -> Path:
    """DDPMPipeline layout: unet/ (UNet2DModel, 3 x 8 x 8) + scheduler/ (DDPMScheduler, 1000 linear steps)."""
    _pixel_unet(6 if learned_variance else 3).save_pretrained(root / "unet")
    save_scheduler(root / "scheduler", prediction_type=prediction_type)
    _model_index(root, "DDPMPipeline", unet=["diffusers", "UNet2DModel"], scheduler=["diffusers", "DDPMScheduler"])
    return root


def build_class_unet(root: Path, *, num_classes: int = 10, null_label: bool = True, conditioning_json: bool = True,
                     pipeline: bool = True, prediction_type: str = "epsilon") -> Path:
    """Class-conditional UNet2DModel with num_class_embeds = num_classes (+ 1 null class), pixel space 3 x 8 x 8.

    pipeline: unet/ + scheduler/ + model_index.json, else a bare model folder with its
    scheduler_config.json beside config.json. conditioning_json: write conditioning.json at the root.
    """
    rows = num_classes + (1 if null_label else 0)
    net = _pixel_unet(num_class_embeds=rows)
    target = root / "unet" if pipeline else root
    net.save_pretrained(target)
    save_scheduler(root / "scheduler" if pipeline else root, prediction_type=prediction_type)
    if pipeline:
        _model_index(root, "DDPMPipeline", unet=["diffusers", "UNet2DModel"], scheduler=["diffusers", "DDPMScheduler"])
    if conditioning_json:
        spec = {"kind": "class", "num_classes": num_classes, "null_label": num_classes if null_label else None,
                "class_names": [f"class {i}" for i in range(num_classes)]}
        (root / "conditioning.json").write_text(json.dumps(spec))
    return root


def build_flow_unet(root: Path, *, shift: float = 3.0, heun: bool = False) -> Path:
    """Rectified-flow pixel UNet2DModel (3 x 8 x 8) with a FlowMatchEuler (or Heun) scheduler of 1000 steps."""
    _pixel_unet().save_pretrained(root / "unet")
    name = "FlowMatchHeunDiscreteScheduler" if heun else "FlowMatchEulerDiscreteScheduler"
    save_scheduler(root / "scheduler", name, shift=shift)
    return root


def _codec(class_name: str, seed: int, **settings):
    """A diffusers autoencoder of `class_name` for 3 x 16 x 16 images (two 32-channel levels), seeded and perturbed."""
    diffusers = _diffusers()
    torch.manual_seed(seed)
    return perturb(getattr(diffusers, class_name)(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=32,
        **settings), seed=seed)


def _kl_vae():
    return _codec("AutoencoderKL", 1, latent_channels=4, sample_size=16, scaling_factor=0.3)


def _vq_vae():
    return _codec("VQModel", 2, latent_channels=3, num_vq_embeddings=16, vq_embed_dim=3, scaling_factor=0.5)


def build_latent_unet(root: Path, *, vae: str = "kl", prediction_type: str = "epsilon") -> Path:
    """Latent UNet2DModel pipeline: vae/ (AutoencoderKL, 4 latent channels) or vqvae/ (VQModel, 3; LDMPipeline
    layout), unet/ on 8 x 8 latents, scheduler/ (DDIMScheduler, scaled_linear betas), model_index.json."""
    diffusers = _diffusers()
    codec = _kl_vae() if vae == "kl" else _vq_vae()
    role = "vae" if vae == "kl" else "vqvae"
    codec.save_pretrained(root / role)
    channels = 4 if vae == "kl" else 3
    torch.manual_seed(3)
    perturb(diffusers.UNet2DModel(
        sample_size=8, in_channels=channels, out_channels=channels, block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=32), seed=3).save_pretrained(root / "unet")
    save_scheduler(root / "scheduler", "DDIMScheduler", beta_schedule="scaled_linear", beta_start=0.00085,
                   beta_end=0.012, prediction_type=prediction_type)
    _model_index(root, "LDMPipeline", unet=["diffusers", "UNet2DModel"], scheduler=["diffusers", "DDIMScheduler"],
                 **{role: ["diffusers", type(codec).__name__]})
    return root


def build_dit(root: Path, *, num_classes: int = 10, vae: bool = True, learned_sigma: bool = True,
              id2label: bool = True, flow: bool = False, legacy_class: bool = False) -> Path:
    """DiTPipeline layout: transformer/ (DiTTransformer2DModel, or the older Transformer2DModel with legacy_class),
    2 blocks, patch 2, on 4 x 8 x 8 latents, num_classes + 1 label rows; vae/ (AutoencoderKL) when vae;
    scheduler/ (DDIMScheduler, or FlowMatchEuler when flow); model_index.json with id2label when id2label.
    Without vae the DiT works on 4 x 8 x 8 pixels."""
    diffusers = _diffusers()
    cls = diffusers.Transformer2DModel if legacy_class else diffusers.DiTTransformer2DModel
    extra = {"norm_type": "ada_norm_zero"} if legacy_class else {}
    torch.manual_seed(4)
    perturb(cls(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8 if learned_sigma else 4,
                num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=num_classes, norm_num_groups=32,
                **extra), seed=4).save_pretrained(root / "transformer")
    components = {"transformer": ["diffusers", cls.__name__]}
    if vae:
        _kl_vae().save_pretrained(root / "vae")
        components["vae"] = ["diffusers", "AutoencoderKL"]
    if flow:
        save_scheduler(root / "scheduler", "FlowMatchEulerDiscreteScheduler")
        components["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    else:
        save_scheduler(root / "scheduler", "DDIMScheduler")
        components["scheduler"] = ["diffusers", "DDIMScheduler"]
    if id2label:
        components["id2label"] = {str(i): f"label {i}" for i in range(num_classes)}
    _model_index(root, "DiTPipeline", **components)
    return root


def write_clip_tokenizer(folder: Path, max_length: int = TOKENIZER_MAX_LENGTH) -> Path:
    """A CLIP BPE tokenizer over lower-case letters (each letter alone and word-final) and three merges."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = list(string.ascii_lowercase)
    vocab = ["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters] + ["lo", "low</w>", "er</w>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length,
                                                              "tokenizer_class": "CLIPTokenizer"}))
    return folder


def build_text_to_image(root: Path, *, prediction_type: str = "epsilon", max_length: int = TOKENIZER_MAX_LENGTH,
                        cross_attention_dim: int = 32) -> Path:
    """StableDiffusionPipeline layout: vae/ (AutoencoderKL), unet/ (UNet2DConditionModel on 4 x 8 x 8 latents,
    cross-attention width 32), text_encoder/ (2-layer CLIPTextModel, hidden 32, max_length positions),
    tokenizer/ (write_clip_tokenizer), scheduler/ (PNDMScheduler, scaled_linear), model_index.json."""
    diffusers = _diffusers()
    transformers = pytest.importorskip("transformers")
    _kl_vae().save_pretrained(root / "vae")
    torch.manual_seed(5)
    perturb(diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32), seed=5
    ).save_pretrained(root / "unet")
    torch.manual_seed(6)
    config = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                         num_hidden_layers=2, vocab_size=60, max_position_embeddings=max_length,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=32)
    perturb(transformers.CLIPTextModel(config), seed=6, scale=0.02).save_pretrained(root / "text_encoder")
    write_clip_tokenizer(root / "tokenizer", max_length)
    save_scheduler(root / "scheduler", "PNDMScheduler", beta_schedule="scaled_linear", beta_start=0.00085,
                   beta_end=0.012, prediction_type=prediction_type, skip_prk_steps=True,
                   steps_offset=1)  # as Stable Diffusion's own (StableDiffusionPipeline warns about 0)
    _model_index(root, "StableDiffusionPipeline", vae=["diffusers", "AutoencoderKL"],
                 unet=["diffusers", "UNet2DConditionModel"], text_encoder=["transformers", "CLIPTextModel"],
                 tokenizer=["transformers", "CLIPTokenizer"], scheduler=["diffusers", "PNDMScheduler"],
                 safety_checker=[None, None], feature_extractor=[None, None])
    return root


def prompt_states(tokenizer, text_encoder, captions) -> torch.Tensor:
    """The text encoder's last hidden states of `captions` padded to the tokenizer's length: what
    StableDiffusionPipeline.encode_prompt computes at guidance scale 1, the tests' reference."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def build_lora(pipeline: Path, out: Path, *, text_encoder: bool = False, rank: int = 4, alpha: float = 8.0,
               seed: int = 7) -> Path:
    """pytorch_lora_weights.safetensors for build_text_to_image's pipeline, written as diffusers' LoRA training
    script writes it (PEFT adapters, convert_state_dict_to_diffusers, save_lora_weights with the adapter metadata):
    rank `rank` on the attention projections and the resnets' conv1 of the UNet, and with text_encoder also on the
    CLIP attention projections (rank 2, alpha 3). B is random so that the LoRA changes the outputs."""
    diffusers = _diffusers()
    peft = pytest.importorskip("peft")
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = diffusers.UNet2DConditionModel.from_pretrained(pipeline / "unet")
    unet_config = peft.LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                  target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"])
    unet.add_adapter(unet_config)
    layers = {"unet_lora_layers": None, "unet_lora_adapter_metadata": unet_config.to_dict()}
    modules = [unet]
    if text_encoder:
        transformers = pytest.importorskip("transformers")
        clip = transformers.CLIPTextModel.from_pretrained(pipeline / "text_encoder")
        clip_config = peft.LoraConfig(r=2, lora_alpha=3, init_lora_weights="gaussian",
                                      target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
        # peft directly: transformers' add_adapter wants a newer peft than diffusers needs.
        peft.inject_adapter_in_model(clip_config, clip)
        modules.append(clip)
        layers["text_encoder_lora_adapter_metadata"] = clip_config.to_dict()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    layers["unet_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    if text_encoder:
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(modules[1]))
    diffusers.StableDiffusionPipeline.save_lora_weights(out, **layers)
    return out / "pytorch_lora_weights.safetensors"
