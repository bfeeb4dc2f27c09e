"""TorchMixture / MixtureArrays against sklearn's BayesianGaussianMixture and scipy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture

from fevae.errors import FevaeError
from fevae.features.mixture import COVARIANCE_TYPES, MixtureArrays
from fevae.features.bgm import fit_mixture, fit_mixtures
from fevae.features.density import TorchMixture

RTOL = 1e-8


def _blobs(d: int, n_per: int = 150, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 6.0, size=(3, d))
    scales = rng.uniform(0.5, 1.5, size=(3, d))
    return np.concatenate([c + s * rng.normal(size=(n_per, d)) for c, s in zip(centers, scales)])


def _queries(train: np.ndarray, seed: int = 1) -> np.ndarray:
    """Training points, jittered training points and far-away points."""
    rng = np.random.default_rng(seed)
    near = train[rng.choice(len(train), 200)] + rng.normal(0.0, 1.0, size=(200, train.shape[1]))
    far = rng.normal(0.0, 15.0, size=(50, train.shape[1]))
    return np.concatenate([train[:100], near, far])


def _sk(features, covariance_type, prior="dirichlet_process", n_components=5):
    bgm = BayesianGaussianMixture(
        n_components=n_components,
        covariance_type=covariance_type,
        max_iter=500,
        reg_covar=1e-6,
        random_state=0,
        weight_concentration_prior_type=prior,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return bgm.fit(features)


def _scipy_component_log_prob(arrays: MixtureArrays, f: np.ndarray) -> np.ndarray:
    c, d = arrays.means.shape
    cols = []
    for k in range(c):
        cov = {
            "full": lambda: arrays.covariances[k],
            "tied": lambda: arrays.covariances,
            "diag": lambda: np.diag(arrays.covariances[k]),
            "spherical": lambda: arrays.covariances[k] * np.eye(d),
        }[arrays.covariance_type]()
        cols.append(multivariate_normal(arrays.means[k], cov).logpdf(f))
    return np.stack(cols, axis=-1)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


CASES = [(5, ct, "dirichlet_process") for ct in COVARIANCE_TYPES] + [
    (5, "full", "dirichlet_distribution"),
    (5, "tied", "dirichlet_distribution"),
    (20, "full", "dirichlet_process"),
    (20, "diag", "dirichlet_distribution"),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda p: f"d{p[0]}-{p[1]}-{p[2]}")
def fitted(request):
    d, covariance_type, prior = request.param
    train = _blobs(d)
    bgm = _sk(train, covariance_type, prior)
    arrays = MixtureArrays.from_sklearn(bgm, n_samples_fit=len(train))
    return bgm, arrays, TorchMixture(arrays), _queries(train)


def test_matches_sklearn_predict_and_score_samples(fitted):
    bgm, _, mix, q = fitted
    qt = torch.from_numpy(q)
    wlp = mix.weighted_log_prob(qt).numpy()
    assert _rel(wlp, bgm._estimate_weighted_log_prob(q)) <= RTOL
    assert _rel(mix.score_samples(qt).numpy(), bgm.score_samples(q)) <= RTOL
    np.testing.assert_allclose(mix.predict_proba(qt).numpy(), bgm.predict_proba(q), rtol=0, atol=1e-10)
    pred = mix.predict(qt)
    assert pred.dtype == torch.int64
    sk_pred = bgm.predict(q)
    top2 = np.sort(wlp, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-9  # exact ties could legitimately flip by rounding
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(pred.numpy()[clear], sk_pred[clear])


def test_component_log_prob_matches_scipy(fitted):
    _, arrays, mix, q = fitted
    ours = mix.component_log_prob(torch.from_numpy(q))
    assert ours.dtype == torch.float64 and ours.shape == (len(q), arrays.n_components)
    assert _rel(ours.numpy(), _scipy_component_log_prob(arrays, q)) <= RTOL


def test_log_p_fe_matches_direct_eq3(fitted):
    bgm, arrays, mix, q = fitted
    rng = np.random.default_rng(2)
    s, b = 4, 6
    f_x = q[rng.choice(len(q), b)]
    f_phi = q[rng.choice(len(q), s * b)].reshape(s, b, -1)
    ours = mix.log_p_fe(torch.from_numpy(f_x).float(), torch.from_numpy(f_phi).float())
    assert ours.shape == (s, b) and ours.dtype == torch.float64
    # reference in float64 on the float32-rounded inputs, component from sklearn's predict
    f_x32 = f_x.astype(np.float32).astype(np.float64)
    f_phi32 = f_phi.astype(np.float32).astype(np.float64).reshape(s * b, -1)
    comp = bgm.predict(f_phi32)
    lp_phi = _scipy_component_log_prob(arrays, f_phi32)[np.arange(s * b), comp].reshape(s, b)
    lp_x_all = _scipy_component_log_prob(arrays, f_x32)  # [b, C]
    lp_x = lp_x_all[np.arange(b)[None, :], comp.reshape(s, b)]
    assert _rel(ours.numpy(), lp_x + lp_phi) <= RTOL
    # leading-shape broadcasting agrees with the elementwise call
    same = mix.log_p_fe(torch.from_numpy(f_x32).expand(s, b, -1), torch.from_numpy(f_phi32).reshape(s, b, -1))
    torch.testing.assert_close(ours, same, rtol=1e-14, atol=0)  # matmul blocking may differ


def test_reconstructed_sklearn_estimator_is_identical(fitted):
    bgm, arrays, _, q = fitted
    rebuilt = arrays.to_sklearn()
    np.testing.assert_array_equal(rebuilt.score_samples(q), bgm.score_samples(q))
    np.testing.assert_array_equal(rebuilt.predict(q), bgm.predict(q))


def test_save_load_round_trip(fitted, tmp_path):
    _, arrays, mix, q = fitted
    path = arrays.save(tmp_path / "sub" / "mixture.npz")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["mixture.npz"]
    with np.load(path, allow_pickle=False) as npz:
        assert "covariance_type" in npz.files
    loaded = MixtureArrays.load(path)
    for name in ("weights", "means", "covariances", "precisions_cholesky", "weight_concentration",
                 "degrees_of_freedom", "mean_precision"):
        a, b = getattr(arrays, name), getattr(loaded, name)
        assert a.dtype == b.dtype == np.float64 and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    for name in ("covariance_type", "weight_concentration_prior_type", "converged", "n_iter",
                 "lower_bound", "n_features", "n_samples_fit"):
        assert getattr(arrays, name) == getattr(loaded, name)
        assert type(getattr(arrays, name)) is type(getattr(loaded, name))
    qt = torch.from_numpy(q)
    torch.testing.assert_close(TorchMixture(loaded).score_samples(qt), mix.score_samples(qt), rtol=0, atol=0)
    summary = loaded.summary()
    assert summary["C"] == arrays.n_components and summary["d"] == arrays.n_features
    assert 1 <= summary["effective_components"] <= arrays.n_components


def test_fit_mixture_equals_direct_sklearn_fit():
    train = _blobs(5)
    arrays = fit_mixture(train, n_components=5, covariance_type="diag", max_iter=500)
    ref = MixtureArrays.from_sklearn(_sk(train, "diag"))
    for name in ("means", "covariances", "precisions_cholesky", "weight_concentration"):
        np.testing.assert_array_equal(getattr(arrays, name), getattr(ref, name))
    assert arrays.n_samples_fit == len(train) and arrays.converged
    assert arrays.weights.dtype == np.float64


def test_fit_mixtures_side_by_side_equal_one_after_another_bit_for_bit():
    feats = {4: _blobs(3, seed=1), 1: _blobs(6, seed=2), 2: _blobs(4, seed=3)}  # not in width order
    kwargs = {"n_components": 4, "covariance_type": "full", "random_state": 0}
    one = fit_mixtures(feats, 1, **kwargs)
    two = fit_mixtures(feats, 2, **kwargs)  # worker processes
    assert list(one) == list(two) == [4, 1, 2]  # the caller's order, whatever order they ran in
    for key, f in feats.items():
        direct = fit_mixture(f, **kwargs).to_dict()
        for arrays, seconds in (one[key], two[key]):
            assert seconds > 0
            got = arrays.to_dict()
            assert all(np.array_equal(got[name], direct[name]) for name in direct), key


def test_fit_mixtures_passes_a_workers_error_on():
    feats = {1: _blobs(3), 2: np.full((50, 3), np.nan)}
    with pytest.raises(FevaeError, match="contain NaN/inf"):
        fit_mixtures(feats, 2, n_components=2)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_fe_n_jobs_must_be_a_number_of_processes(bad):
    from fevae.features.fitting import fit_workers

    with pytest.raises(FevaeError, match="fe.n_jobs"):
        fit_workers(bad, 4)
    assert fit_workers(-1, 1) == 1 and fit_workers(3, 2) == 2 and fit_workers(1, 4) == 1


def test_dtype_casts_keep_float64():
    arrays = fit_mixture(_blobs(5), n_components=3, covariance_type="full")
    mix = TorchMixture(arrays)
    q = torch.from_numpy(_queries(_blobs(5)))
    ref = mix.score_samples(q)
    for cast in (lambda m: m.float(), lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.double()):
        mix = cast(mix)
        assert all(b.dtype == torch.float64 for b in mix.buffers())
        out = mix.score_samples(q.float())
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, mix.score_samples(q.float().double()), rtol=0, atol=0)
    torch.testing.assert_close(mix.score_samples(q), ref, rtol=0, atol=0)
    assert mix.state_dict() == {}  # the .npz is the source of truth, not checkpoints


def test_wrong_feature_dim_raises():
    mix = TorchMixture(fit_mixture(_blobs(5), n_components=3))
    with pytest.raises(FevaeError, match=r"\[\.\.\., 5\]"):
        mix.component_log_prob(torch.zeros(2, 4))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(n_components=0), "fe.C"),
        (dict(n_components=2.5), "fe.C"),
        (dict(n_components=11), "fe.n"),
        (dict(covariance_type="banana"), "fe.covariance_type"),
        (dict(weight_concentration_prior_type="x"), "fe.weight_concentration_prior_type"),
        (dict(max_iter=0), "fe.max_iter"),
        (dict(reg_covar=-1.0), "fe.reg_covar"),
        (dict(init_params="x"), "fe.init_params"),
    ],
)
def test_invalid_arguments_raise_before_fitting(kwargs, key, monkeypatch):
    import sklearn.mixture

    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("fit called")

    monkeypatch.setattr(sklearn.mixture.BayesianGaussianMixture, "fit", boom)
    with pytest.raises(FevaeError, match=key.replace(".", r"\.")):
        fit_mixture(np.random.default_rng(0).normal(size=(10, 3)), **{"n_components": 2, **kwargs})


@pytest.mark.parametrize("bad", [np.zeros((5,)), np.zeros((5, 0)), np.array([[0.0, np.nan]] * 5)])
def test_invalid_features_raise(bad):
    with pytest.raises(FevaeError):
        fit_mixture(bad, n_components=1)


def test_load_missing_corrupt_and_incomplete_files(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FevaeError, match="nope.npz"):
        MixtureArrays.load(missing)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"this is not a zip file")
    with pytest.raises(FevaeError, match="corrupt.npz"):
        MixtureArrays.load(corrupt)
    arrays = fit_mixture(_blobs(5), n_components=3, covariance_type="spherical")
    full = arrays.to_dict()
    incomplete = tmp_path / "incomplete.npz"
    np.savez(incomplete, **{k: v for k, v in full.items() if k != "means"})
    with pytest.raises(FevaeError, match=r"incomplete\.npz.*means"):
        MixtureArrays.load(incomplete)
    bad_shape = tmp_path / "bad_shape.npz"
    np.savez(bad_shape, **{**full, "covariances": np.ones((2, 2))})
    with pytest.raises(FevaeError, match=r"bad_shape\.npz.*covariances"):
        MixtureArrays.load(bad_shape)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{**full, "means": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(FevaeError, match="pickled.npz"):
        MixtureArrays.load(pickled)
    truncated = tmp_path / "truncated.npz"
    arrays.save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(FevaeError, match="truncated.npz"):
        MixtureArrays.load(truncated)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    train = _blobs(5)
    mix = TorchMixture(fit_mixture(train, n_components=4, covariance_type="full"))
    q = torch.from_numpy(_queries(train))
    ref_score, ref_fe = mix.score_samples(q), mix.log_p_fe(q[:6], q[6:30].reshape(4, 6, -1))
    mix = mix.to("cuda").float()
    assert all(b.is_cuda and b.dtype == torch.float64 for b in mix.buffers())
    qc = q.cuda()
    torch.testing.assert_close(mix.score_samples(qc).cpu(), ref_score, rtol=1e-12, atol=0)
    torch.testing.assert_close(mix.log_p_fe(qc[:6], qc[6:30].reshape(4, 6, -1)).cpu(), ref_fe, rtol=1e-12, atol=0)
