# The node agent image: baton-agent (datapath compiled in) and the libraries
# it links. One definition for every builder: e2e/images/build.sh stages the
# context (rootfs/ holds the host-built binary and what `ldd` lists) and builds
# it with buildah (the real-node rig) or docker (e2e/kind/run.sh).
FROM scratch
LABEL dev.baton.image="ghcr.io/baton-dev/baton-agent"
COPY rootfs/ /
# The pod's args (KmeshUpgrade spec.pod.extraArgs) follow `run`.
ENTRYPOINT ["/usr/local/bin/baton-agent", "run"]
