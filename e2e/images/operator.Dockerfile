# The operator image: baton-operator and its libraries (context staged by
# e2e/images/build.sh). The chart runs it with `run ...` as uid 65532 on a
# read-only root filesystem.
FROM scratch
LABEL dev.baton.image="ghcr.io/baton-dev/baton-operator"
COPY rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/baton-operator"]
