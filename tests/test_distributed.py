"""r1jax.distributed's one use of private JAX API: the cluster detectors `jax.distributed.initialize` runs."""
import pytest

from r1jax import distributed

SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node1", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0"}


def test_jax_still_lists_its_cluster_detectors_as_r1jax_reads_them():
    """Fails when a JAX upgrade moves or reshapes `jax._src.clusters.ClusterEnv._cluster_types`:
    then `cluster_detected` (and so `initialize` without arguments) needs another way to ask."""
    from jax._src import clusters

    assert isinstance(clusters.ClusterEnv._cluster_types, list)
    detectors = distributed.jax_cluster_detectors()
    assert detectors == clusters.ClusterEnv._cluster_types
    names = {detector.__name__ for detector in detectors}
    assert {"SlurmCluster", "OmpiCluster", "Mpi4pyCluster", "GceTpuCluster", "K8sCluster"} <= names, names
    for detector in detectors:
        assert issubclass(detector, clusters.ClusterEnv)
        assert callable(detector.is_env_present) and isinstance(detector.opt_in_only_method, bool), detector
    opt_in = {detector.__name__ for detector in detectors if detector.opt_in_only_method}
    assert opt_in == {"Mpi4pyCluster"}  # chosen explicitly only: cluster_detected skips it


def test_cluster_detected_reads_slurm_variables(monkeypatch):
    slurm = next(d for d in distributed.jax_cluster_detectors() if d.__name__ == "SlurmCluster")
    for name in SLURM:
        monkeypatch.delenv(name, raising=False)
    assert not slurm.is_env_present()
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)
    assert slurm.is_env_present() and distributed.cluster_detected()


def test_a_moved_registry_is_a_loud_error(monkeypatch):
    from jax._src import clusters

    monkeypatch.delattr(clusters.ClusterEnv, "_cluster_types")
    with pytest.raises(RuntimeError, match="_cluster_types.*update r1jax.distributed.jax_cluster_detectors"):
        distributed.cluster_detected()
