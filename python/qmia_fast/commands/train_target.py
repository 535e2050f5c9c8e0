"""`qmia-fast train-target`: train a target DDPM on the member images of a data set, resumably."""
from __future__ import annotations

import sys

import click

from ..training import SUMMARY_NAME, TRAIN_DEFAULTS

_D = TRAIN_DEFAULTS


class _ProgressBar:
    """click progress bar fed by train_ddpm's per-step callback, showing a smoothed running loss."""

    def __init__(self):
        self.bar = None
        self.running_loss = None

    def __call__(self, step: int, total: int, loss: float) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="training", show_eta=True, show_pos=True,
                                         item_show_func=self._describe, file=sys.stderr)
            self.bar.__enter__()
            if step > 1:
                self.bar.update(step - 1)  # resumed: the bar starts where the checkpoint left off
        self.running_loss = loss if self.running_loss is None else 0.98 * self.running_loss + 0.02 * loss
        self.bar.update(1, current_item=self.running_loss)

    @staticmethod
    def _describe(loss):
        return "" if loss is None else f"loss {loss:.4f}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


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
def train_target(data, split_path, members, part, out_dir, steps, batch_size, lr, warmup, ema_decay, grad_clip,
                 weight_decay, hflip, bf16, seed, device, save_every, ch, ch_mult, attn, num_res_blocks, dropout,
                 T, beta_1, beta_T):
    """Train a target DDPM (the pytorch-ddpm UNet, eps-prediction) on the members of a data set.

    The result loads with `qmia-fast attack --model OUT`. Kill it at any time: rerunning the
    same command continues from the last checkpoint.
    """
    unet = {"T": T, "ch": ch, "ch_mult": _int_list(ch_mult, "--ch-mult"), "attn": _int_list(attn, "--attn"),
            "num_res_blocks": num_res_blocks, "dropout": dropout}
    # Validate the cheap options before reading any data.
    from ..models.unet import normalize_unet_config
    from ..schedule import linear_schedule

    normalize_unet_config({**unet, "img_size": 2 ** (len(unet["ch_mult"]) - 1)})
    schedule = linear_schedule(T, beta_1, beta_T)

    from ..data import load_data
    from ..training import train_ddpm

    loaded = load_data(data, split=split_path, members=members, part=part)
    images, split = loaded
    if split is not None:
        images = images[split.members]
        click.echo(f"data: {loaded.description}; training on the {len(images)} members", err=True)
    else:
        click.echo(f"data: {loaded.description}; no split given, so all {len(images)} images are members", err=True)

    bar = _ProgressBar()
    try:
        summary = train_ddpm(
            images, out_dir, unet=unet, schedule=schedule, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
            ema_decay=ema_decay, grad_clip=grad_clip, weight_decay=weight_decay, hflip=hflip, bf16=bf16, seed=seed,
            device=None if device == "auto" else device, save_every=save_every, progress=bar,
            metadata={"data": str(data), "split": split_path, "members": members,
                      "n_members": int(len(images)), "data_description": loaded.description},
        )
    finally:
        bar.close()
    if summary["resumed_from_step"] >= steps:
        click.echo(f"already trained to step {summary['resumed_from_step']} in {out_dir}; nothing to do")
    elif summary["resumed_from_step"]:
        click.echo(f"resumed from step {summary['resumed_from_step']}")
    click.echo(
        f"trained {summary['steps']} steps in {summary['wall_time_s']:.1f} s on {summary['device']}; "
        f"final loss {summary['final_loss']:.4f} (mean of last {summary['final_loss_window']}: "
        f"{summary['final_loss_mean']:.4f}); model in {out_dir}, summary in {out_dir}/{SUMMARY_NAME}"
    )
