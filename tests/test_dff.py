"""Deep Feature Factorization against pytorch-grad-cam 1.5.7 and scikit-learn.

NMF is not unique and the two libraries use different solvers (fxcam: multiplicative updates in
torch; pytorch-grad-cam: scikit-learn's coordinate descent) from different random draws, so the
checks are layered:

1. the solver: fxcam's ``nmf`` equals scikit-learn's ``NMF(solver="mu")`` update for update from
   the same initial factors (same iteration count with the same ``tol``);
2. the pipeline: with pytorch-grad-cam's NMF replaced by fxcam's solver (same seed), concepts,
   per-image maps and concept x class scores equal pytorch-grad-cam's;
3. the real reference: against pytorch-grad-cam with scikit-learn's solver, the reconstruction
   error is as low (within 2%) and the matched concepts, their maps and their top classes agree.
"""

import numpy as np
import pytest
import torch

from fxcam import FxcamError, dff

pgc = pytest.importorskip("pytorch_grad_cam")
sklearn_nmf = pytest.importorskip("sklearn.decomposition").NMF
from pytorch_grad_cam import DeepFeatureFactorization  # noqa: E402
from pytorch_grad_cam.feature_factorization import deep_feature_factorization as pgc_dff  # noqa: E402


def _pgc(net, layer, x, k, classifier=True):
    d = DeepFeatureFactorization(net, net.get_submodule(layer), computation_on_concepts=net.fc if classifier else None)
    try:
        return d(x, k)
    finally:
        d.activations_and_grads.release()


@pytest.mark.parametrize("max_iter, tol", [(60, 0.0), (1000, 1e-4)], ids=["fixed-iterations", "tol-stopping"])
def test_nmf_matches_sklearn_multiplicative_updates(max_iter, tol):
    x = torch.rand(48, 30, generator=torch.Generator().manual_seed(2))
    x[x < 0.3] = 0  # some exact zeros, as after the offset
    w0, h0 = dff.random_init(x, 4, torch.Generator().manual_seed(3))
    w, h, it = dff.nmf(x, 4, init=(w0, h0), max_iter=max_iter, tol=tol)
    ref = sklearn_nmf(4, init="custom", solver="mu", max_iter=max_iter, tol=tol)
    w_ref = ref.fit_transform(x.numpy(), W=w0.numpy().copy(), H=h0.numpy().copy())
    assert it == ref.n_iter_
    assert np.abs(w.numpy() - w_ref).max() <= 1e-4 * np.abs(w_ref).max()
    assert np.abs(h.numpy() - ref.components_).max() <= 1e-4 * np.abs(ref.components_).max()


class _FxcamSolver:
    """Stands in for scikit-learn's NMF inside pytorch-grad-cam: fxcam's solver, fxcam's default seed."""

    def __init__(self, n_components, init=None, random_state=None):
        self.k = n_components

    def fit_transform(self, x):
        w, h, _ = dff.nmf(torch.from_numpy(x), self.k, generator=torch.Generator().manual_seed(0))
        self.components_ = h.numpy()
        return w.numpy()


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_pipeline_matches_pytorch_grad_cam_with_the_same_solver(resnet18, images, layer, monkeypatch, untouched):
    monkeypatch.setattr(pgc_dff, "NMF", _FxcamSolver)
    classifier = layer == "layer4"
    with untouched(resnet18, bare=True):  # neither leaves a hook (nor anything else) behind
        ref = _pgc(resnet18, layer, images, 4, classifier)
        ours = dff.factorize(resnet18, images, layer, 4, classifier="auto" if classifier else None)
    concepts, maps = ref[0], np.stack(ref[1])
    assert ours.concepts.shape == concepts.shape and ours.maps.shape == maps.shape == (2, 4, 64, 64)
    assert np.abs(ours.concepts.numpy() - concepts).max() <= 1e-4 * np.abs(concepts).max()
    assert np.abs(ours.maps.numpy() - maps).max() <= 1e-4
    if classifier:
        assert np.abs(ours.scores.numpy() - ref[2]).max() <= 1e-4 * np.abs(ref[2]).max()
    else:
        assert ours.scores is None


def test_matches_pytorch_grad_cam_sklearn_solver(resnet18, images):
    from scipy.optimize import linear_sum_assignment

    k = 3
    concepts, maps, outputs = _pgc(resnet18, "layer4", images, k)
    maps = np.stack(maps)
    ours = dff.factorize(resnet18, images, "layer4", k)

    # pytorch-grad-cam's reconstruction error, from its raw factors
    acts = {}
    handle = resnet18.layer4.register_forward_hook(lambda m, i, o: acts.update(a=o.detach()))
    resnet18(images)
    handle.remove()
    x = acts["a"].transpose(0, 1).reshape(512, -1).numpy()
    offset = x.min(1, keepdims=True)
    _, raw = pgc_dff.dff(acts["a"].numpy().copy(), k)
    w_ref, h_ref = concepts - offset, raw.transpose(1, 0, 2, 3).reshape(k, -1)
    err_ref = np.linalg.norm(x - offset - w_ref @ h_ref) / np.linalg.norm(x - offset)
    assert ours.error <= 1.02 * err_ref

    # concepts matched by cosine similarity (Hungarian assignment)
    w = ours.concepts.numpy() - offset
    cos = (w / np.linalg.norm(w, axis=0)).T @ (w_ref / np.linalg.norm(w_ref, axis=0))
    rows, cols = linear_sum_assignment(-cos)
    assert cos[rows, cols].min() >= 0.9
    for i, j in zip(rows, cols):
        assert int(ours.scores[i].argmax()) == int(outputs[j].argmax())
        assert np.corrcoef(ours.maps[:, i].numpy().ravel(), maps[:, j].ravel())[0, 1] >= 0.95


def test_seeded_progress_and_report(resnet18, images, capsys):
    a = dff.factorize(resnet18, images, "layer4", 3)
    b = dff.factorize(resnet18, images, "layer4", 3, seed=0)
    c = dff.factorize(resnet18, images, "layer4", 3, seed=1)
    assert torch.equal(a.concepts, b.concepts) and torch.equal(a.maps, b.maps)
    assert not torch.equal(a.concepts, c.concepts)
    assert capsys.readouterr().err == ""  # silent by default
    dff.factorize(resnet18, images, "layer4", 3, progress=True)
    assert "dff nmf" in capsys.readouterr().err

    # scores: the model's fc on the concepts; a module name works too; None gives no scores
    assert torch.allclose(a.scores, resnet18.fc(a.concepts.T), atol=1e-5)
    assert torch.allclose(dff.factorize(resnet18, images, "layer4", 3, classifier="fc").scores, a.scores)
    probs, classes = a.top_classes(2)
    assert classes[:, 0].tolist() == a.scores.argmax(1).tolist()
    names = {i: f"class {i}, extra, more, dropped" for i in range(1000)}
    legend = a.labels(names, top_k=2)
    first = legend[0].split("\n")
    assert len(legend) == 3 and len(first) == 2
    assert first[0] == f"class {int(classes[0, 0])}, extra, more:{float(probs[0, 0]):.2f}"
    none = dff.factorize(resnet18, images, "layer4", 3, classifier=None)
    assert none.scores is None
    with pytest.raises(FxcamError, match="classifier"):
        none.top_classes()


def test_errors_are_clear(resnet18, images):
    with pytest.raises(FxcamError, match="non-negative"):
        dff.nmf(-torch.ones(3, 3), 2)
    with pytest.raises(FxcamError, match="n_components"):
        dff.nmf(torch.ones(3, 3), 0)
    with pytest.raises(FxcamError, match="not a submodule"):
        dff.factorize(resnet18, images, "layer4", 2, classifier="head")
