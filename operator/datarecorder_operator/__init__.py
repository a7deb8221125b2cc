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

Modules (import layers, checked by import-linter; ``.importlinter`` lists every one): ``cli`` >
``handlers`` > ``memo`` > ``reconcile`` > ``children`` | ``autoscaling`` > ``state`` > ``reset`` >
``rendering`` | ``status`` > ``workload`` | ``replicas`` > ``environment`` | ``drift`` >
``naming`` | ``sinks`` > ``kube`` | ``kafkalag`` > ``parsing`` > ``parsing_kafka`` >
``spec_reader`` > ``spec`` | ``lag`` | ``rbac`` > ``quantity`` | ``policy``. Everything from
``reset`` down but ``kube`` and ``kafkalag`` is pure (a contract forbids I/O libraries there).
"""
