"""Kopf operator for DataRecorder resources: renders and reconciles recorder Deployments.

Run it
------

The CRD must be installed first (``kubectl apply -f crds/datarecorders.datarecorder.dev.yaml``);
the operator finds the cluster through the in-cluster service account or ``$KUBECONFIG``
(``~/.kube/config``)::

    python -m datarecorder_operator run                    # every namespace
    python -m datarecorder_operator run --namespace md     # one namespace (repeatable)
    datarecorder operator run ...                          # the same, via the recorder's CLI
    python -m datarecorder_operator render -f examples/full.yaml   # print the children

``run`` options: ``--tick SECONDS`` (timer period, default 5), ``--resync SECONDS`` (re-apply
children, restoring drift; default 30), ``--liveness URL`` (kopf's probe endpoint, e.g.
``http://0.0.0.0:8080/healthz``), ``--verbose``. The RBAC it needs is
``datarecorder_operator.rbac.CLUSTER_ROLE_RULES``.

Modules (import layers, checked by import-linter): ``cli`` > ``handlers`` > ``scaler`` >
``rendering`` | ``status`` > ``spec`` | ``lag`` > ``kube``; ``quantity`` (pure, used by ``spec``
and ``rendering``), ``kafkalag`` (Kafka I/O) and ``rbac`` (data) stand aside.
"""
