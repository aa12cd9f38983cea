"""Released RadDiag checkpoint import: a PyTorch RadNet with the original attribute names
(``modelRadNet.RadNet``: resnet2D, attention1D, vitFuse, fc / fcke) is saved as the HF
Trainer does, imported, and must reproduce its logits."""

import jax
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (disables eager sharding)
from configs import rp3d_diag as rp3d_config
from radjax.convert.torch_io import ConversionError
from radjax.papers.rp3d_diag import convert as convert
from radjax.papers.rp3d_diag import model as rp3d_diag
from tests.nn.test_transformer import TorchAnnotatedEncoder, torch_state

torch = pytest.importorskip("torch")
nn = torch.nn

WIDTH, DEPTH, SIZE, CLASSES, TEXT_DIM = 8, 4, 32, 10, 12


class TorchBottleneck(nn.Module):
    """torchvision's v1.5 bottleneck (stride on the 3x3), with its attribute names."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        cout = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x):
        y = self.bn1(self.conv1(x)).relu()
        y = self.bn2(self.conv2(y)).relu()
        y = self.bn3(self.conv3(y))
        return (y + (x if self.downsample is None else self.downsample(x))).relu()


class TorchResNet(nn.Module):
    """torchvision-named ResNet with one bottleneck per stage; returns pooled features."""

    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for i in range(4):
            planes = width * 2**i
            block = TorchBottleneck(cin, planes, 1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", nn.Sequential(block))
            cin = planes * 4
        self.fc = nn.Linear(cin, 1000)  # in the checkpoint, unused
        self.out_features = cin

    def forward(self, x):
        x = nn.functional.max_pool2d(self.bn1(self.conv1(x)).relu(), 3, 2, 1)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(2, 3))


class TorchAttention1D(nn.Module):
    def __init__(self, d, depth):
        super().__init__()
        self.transformer_encoder = TorchAnnotatedEncoder(d, d, 1, 1)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.pos_emb = nn.Parameter(torch.randn(1 + depth, d))

    def forward(self, x, marks):
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_emb
        mask = nn.functional.pad(marks, (1, 0), value=1).bool()
        y, _, scores = self.transformer_encoder(x, mask)
        return y[:, 0], scores.mean(1)[:, 0, 1:]


class TorchVitFuse(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.mod_embed = nn.Parameter(torch.randn(16, d))
        self.transformer_encoder = TorchAnnotatedEncoder(d, d, 4, 2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))

    def forward(self, x, mods):
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x + self.mod_embed[mods]], 1)
        mask = nn.functional.pad(mods != 0, (1, 0), value=True)
        return self.transformer_encoder(x, mask)[0][:, 0]


class TorchRadNet(nn.Module):
    """The released RadNet's forward (no augmentation), original attribute names."""

    def __init__(self, early, label_embeddings=None):
        super().__init__()
        self.resnet2D = TorchResNet(WIDTH)
        d = self.resnet2D.out_features
        self.attention1D = TorchAttention1D(d, DEPTH)
        self.early = early
        if early:
            self.vitFuse = TorchVitFuse(d)
        self.emb = label_embeddings
        if label_embeddings is None:
            self.fc = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, CLASSES))
        else:
            self.fcke = nn.Linear(label_embeddings.shape[1], d)
        for m in self.modules():  # non-trivial BatchNorm statistics and affine terms
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    nn.init.normal_(t, std=0.3)
                nn.init.uniform_(m.running_var, 0.5, 1.5)

    def forward(self, images, marks, mods):
        """images (B, N, 1, H, W, D) as the original takes them."""
        b, n = images.shape[:2]
        x = images.repeat(1, 1, 3, 1, 1, 1).permute(0, 1, 5, 2, 3, 4).reshape(-1, 3, SIZE, SIZE)
        feats = self.resnet2D(x).reshape(b * n, DEPTH, -1)
        scans, scores = self.attention1D(feats, marks.reshape(b * n, DEPTH))
        case = self.vitFuse(scans.reshape(b, n, -1), mods) if self.early else scans
        if self.emb is None:
            return self.fc(case), scores
        return case @ self.fcke(self.emb).T, scores


def _config(fusion, ke):
    c = rp3d_config.get_config(f"tiny,fusion={fusion}" + (",ke" if ke else ""))
    c.model.num_classes = CLASSES
    c.model.resnet.layers = (1, 1, 1, 1)
    c.model.resnet.width = WIDTH
    c.model.depth = DEPTH
    return c


def _inputs(n, seed=0):
    r = np.random.default_rng(seed)
    marks = (np.arange(DEPTH) < r.integers(1, DEPTH + 1, (2, n, 1))).astype(np.float32)
    images = r.random((2, n, DEPTH, SIZE, SIZE, 1), dtype=np.float32)
    mods = np.array([[3, 0][:n], [5, 9][:n]], np.int32)
    return images * marks[..., None, None, None], marks, mods


def _compare(model, ref, n):
    images, marks, mods = _inputs(n)
    with torch.no_grad():
        want, want_scores = ref(
            torch.tensor(images).permute(0, 1, 5, 3, 4, 2),
            torch.tensor(marks),
            torch.tensor(mods).long(),
        )
    graphdef, state = nnx.split(model)
    got, scores = jax.jit(lambda s: nnx.merge(graphdef, s)(images, marks, mods))(state)
    err = np.abs(np.asarray(got) - want.numpy()).max() / np.abs(want.numpy()).max()
    assert err < 1e-5, err
    valid = marks.reshape(-1, DEPTH) > 0
    np.testing.assert_allclose(
        np.asarray(scores).reshape(-1, DEPTH)[valid],
        want_scores.numpy()[valid],
        rtol=1e-4,
        atol=1e-4,
    )


def test_late_fusion_bin_checkpoint_reproduces_logits(tmp_path):
    torch.manual_seed(0)
    ref = TorchRadNet(early=False).eval()
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    model = convert.load_released(tmp_path, _config("late", ke=False))
    _compare(model, ref, n=1)


def test_early_fusion_knowledge_safetensors_checkpoint_reproduces_logits(tmp_path):
    from safetensors.torch import save_model  # drops the template modules' duplicate keys

    torch.manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(CLASSES, TEXT_DIM), dim=1)
    ref = TorchRadNet(early=True, label_embeddings=emb).eval()
    save_model(ref, str(tmp_path / "model.safetensors"))
    model = convert.load_released(
        tmp_path / "model.safetensors", _config("early", ke=True), label_embeddings=emb.numpy()
    )
    assert isinstance(model.head.label_embeddings, rp3d_diag.LabelEmbeddings)
    _compare(model, ref, n=2)


def test_mismatched_checkpoint_is_refused():
    torch.manual_seed(0)
    sd = torch_state(TorchRadNet(early=True))
    with pytest.raises(ConversionError, match="vitFuse"):
        convert.from_released(sd, _config("late", ke=False))
    with pytest.raises(ConversionError, match="fcke"):
        convert.from_released(sd, _config("early", ke=True))
    with pytest.raises(ConversionError, match="unexpected_key"):
        convert.from_released(sd | {"unexpected_key": np.zeros(1)}, _config("early", ke=False))
