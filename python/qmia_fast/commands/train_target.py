"""`qmia-fast train-target`: train a target DDPM on the member images of a data set, resumably."""
from __future__ import annotations

import click

from ..progress import StepProgress
from ..training import DIFFUSERS_DEFAULTS, SUMMARY_NAME, TRAIN_DEFAULTS

_D = TRAIN_DEFAULTS
DIT, TEXT = DIFFUSERS_DEFAULTS["dit"], DIFFUSERS_DEFAULTS["text_encoder"]


def _sizes(*rows):
    """Whole-number size options of the DiT and text-encoder families: (option, default, help)."""
    def apply(func):
        for name, default, text in reversed(rows):
            func = click.option(name, type=click.IntRange(min=1), default=default, show_default=True, help=text)(func)
        return func

    return apply


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [v.strip() for v in text.split(",")]
    if not all(names):
        raise click.BadParameter(f"{text!r} must be comma-separated non-empty names", param_hint="--class-names")
    return names


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise click.BadParameter(f"{text!r} must be comma-separated integers, e.g. 1,2,2,2",
                                 param_hint=option) from None


@click.command("train-target")
@click.option("--data", default="builtin", show_default=True,
              help="Images: 'builtin' (the demo data) or a path load_data understands (.npy/.npz, image folder, CIFAR, idx).")
@click.option("--split", "split_path", default=None, help="Split file (ours or SecMI/PIA's); only its members are trained on.")
@click.option("--members", default=None, help="Instead of --split: a file of member indices to train on.")
@click.option("--part", type=click.Choice(["train", "test", "all"]), default=None,
              help="For CIFAR/idx folders: which part to read (default train).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: model.pt + config.json (EMA weights), checkpoint.pt, train_summary.json. "
                   "Rerunning with the same folder resumes.")
@click.option("--steps", type=click.IntRange(min=1), default=_D["steps"], show_default=True, help="Total optimizer steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=_D["batch_size"], show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_D["lr"], show_default=True,
              help="Peak AdamW learning rate.")
@click.option("--warmup", type=click.IntRange(min=0), default=_D["warmup"], show_default=True,
              help="Linear learning-rate warm-up steps.")
@click.option("--ema-decay", type=click.FloatRange(min=0, max=1, max_open=True), default=_D["ema_decay"],
              show_default=True, help="EMA decay (warmed up as (1+step)/(10+step) early on).")
@click.option("--grad-clip", type=click.FloatRange(min=0), default=_D["grad_clip"], show_default=True,
              help="Gradient-norm clip; 0 disables.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=_D["weight_decay"], show_default=True)
@click.option("--hflip/--no-hflip", default=_D["hflip"], show_default=True, help="Random horizontal flips.")
@click.option("--bf16/--no-bf16", default=_D["bf16"], show_default=True, help="bfloat16 autocast (CPU or CUDA).")
@click.option("--seed", type=click.IntRange(min=0), default=_D["seed"], show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--save-every", type=click.IntRange(min=1), default=_D["save_every"], show_default=True,
              help="Write checkpoint.pt and the model every this many steps.")
@click.option("--ch", type=click.IntRange(min=32), default=128, show_default=True, help="UNet base channels (multiple of 32).")
@click.option("--ch-mult", default="1,2,2,2", show_default=True, help="Channel multiplier per resolution level.")
@click.option("--attn", default="1", show_default=True, help="Levels with self-attention (comma list, may be empty).")
@click.option("--num-res-blocks", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--dropout", type=click.FloatRange(min=0, max=1, max_open=True), default=0.1, show_default=True)
@click.option("--T", "T", type=click.IntRange(min=1), default=1000, show_default=True, help="Diffusion steps.")
@click.option("--beta-1", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=1e-4,
              show_default=True, help="First beta of the linear schedule.")
@click.option("--beta-T", "beta_T", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=0.02,
              show_default=True, help="Last beta of the linear schedule.")
@click.option("--condition", type=click.Choice(["none", "class"]), default="none", show_default=True,
              help="class: a class-conditional diffusers UNet2DModel on the members' labels (null class K for CFG).")
@click.option("--labels", "labels_path", default=None,
              help="Class labels of all images (index-file formats: .npy/.npz/.json/text); default: the data's own.")
@click.option("--class-names", default=None, help="Comma-separated class names (default: Fashion-MNIST's for "
              "--data builtin, else 0..K-1).")
@click.option("--cfg-dropout", type=click.FloatRange(min=0, max=1), default=DIFFUSERS_DEFAULTS["cfg_dropout"],
              show_default=True, help="Share of steps that see the null condition (class K, or the empty caption).")
@click.option("--objective", type=click.Choice(["ddpm", "flow"]), default="ddpm", show_default=True,
              help="flow: rectified-flow matching (x_s = (1-s) x0 + s eps, predicts v = eps - x0).")
@click.option("--flow-timesteps", type=click.Choice(["uniform", "logit-normal"]), default="uniform",
              show_default=True, help="How flow matching draws s.")
@click.option("--latent", is_flag=True, help="Latent target: an AutoencoderKL trained first on --vae-data "
              "(non-members), the denoiser on the members' latents.")
@click.option("--denoiser", type=click.Choice(["unet", "dit"]), default="unet", show_default=True,
              help="dit: a class-conditional DiTTransformer2DModel on the latents (needs --latent).")
@click.option("--text", is_flag=True, help="Text-to-image target (implies --latent): captions through a frozen "
              "CLIPTextModel, a UNet2DConditionModel; StableDiffusionPipeline layout.")
@click.option("--captions", default=None, help="Caption file (metadata.jsonl/.csv with file_name and text); "
              "default: metadata.jsonl in the --data image folder.")
@click.option("--caption-column", default="text", show_default=True)
@click.option("--vae-data", default=None, help="Images for the VAE, none of them a member (path load_data reads).")
@click.option("--vae-part", type=click.Choice(["train", "test", "all"]), default=None,
              help="For an idx/CIFAR --vae-data folder: which part.")
@click.option("--vae", "vae_from", default=None, help="Reuse a VAE trained before (a latent target's folder).")
@click.option("--vae-ch", default=",".join(map(str, DIFFUSERS_DEFAULTS["vae"]["vae_ch"])), show_default=True,
              help="VAE channels per level (n levels down-sample 2^(n-1) times).")
@click.option("--latent-channels", type=click.IntRange(min=1), default=DIFFUSERS_DEFAULTS["vae"]["latent_channels"],
              show_default=True)
@click.option("--kl-weight", type=click.FloatRange(min=0), default=DIFFUSERS_DEFAULTS["vae"]["kl_weight"],
              show_default=True, help="Weight of the mean KL term beside the mean squared reconstruction error.")
@click.option("--vae-steps", type=click.IntRange(min=1), default=DIFFUSERS_DEFAULTS["vae"]["steps"], show_default=True)
@click.option("--vae-batch-size", type=click.IntRange(min=1), default=DIFFUSERS_DEFAULTS["vae"]["batch_size"],
              show_default=True)
@click.option("--vae-lr", type=click.FloatRange(min=0, min_open=True), default=DIFFUSERS_DEFAULTS["vae"]["lr"],
              show_default=True)
@_sizes(("--dit-layers", DIT["layers"], None), ("--dit-heads", DIT["heads"], None),
        ("--dit-head-dim", DIT["head_dim"], None), ("--patch-size", DIT["patch_size"], None),
        ("--text-dim", TEXT["dim"], "CLIPTextModel hidden size."), ("--text-layers", TEXT["layers"], None),
        ("--text-heads", TEXT["heads"], None))
@click.option("--text-max-length", type=click.IntRange(min=3), default=TEXT["max_length"], show_default=True,
              help="Token positions (tokenizer model_max_length).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads [default: torch's].")
def train_target(**options):
    """Train a target on the members of a data set: by default a DDPM (the pytorch-ddpm UNet, eps-prediction).

    --condition class, --objective flow, --latent, --denoiser dit and --text train the diffusers
    families instead and write standard diffusers folders (see docs/targets.md). The result
    loads with `qmia-fast attack --model OUT`. Kill it at any time: rerunning the same command
    continues from the last checkpoint.
    """
    from ..training.run import TrainJob, run_training

    for name, option in (("ch_mult", "--ch-mult"), ("attn", "--attn"), ("vae_ch", "--vae-ch")):
        options[name] = tuple(_int_list(options[name], option))
    options["class_names"] = None if options["class_names"] is None else tuple(_names(options["class_names"]))
    job = TrainJob(**options)
    bar = StepProgress()
    try:
        summary = run_training(job, log=lambda text: click.echo(text, err=True), progress=bar)
    finally:
        bar.close()
    _report(summary, job.steps, job.out_dir)


def _report(summary, steps, out_dir) -> None:
    if summary["resumed_from_step"] >= steps:
        click.echo(f"already trained to step {summary['resumed_from_step']} in {out_dir}; nothing to do")
    elif summary["resumed_from_step"]:
        click.echo(f"resumed from step {summary['resumed_from_step']}")
    click.echo(
        f"trained {summary['steps']} steps in {summary['wall_time_s']:.1f} s on {summary['device']}; "
        f"final loss {summary['final_loss']:.4f} (mean of last {summary['final_loss_window']}: "
        f"{summary['final_loss_mean']:.4f}); model in {out_dir}, summary in {out_dir}/{SUMMARY_NAME}"
    )
