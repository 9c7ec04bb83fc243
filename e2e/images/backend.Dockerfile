# Test backends and clients of the e2e scenarios: baton-probe (`serve` answers
# each connection with its identity, then echoes). Context staged by
# e2e/images/build.sh.
FROM scratch
LABEL dev.baton.image="ghcr.io/baton-dev/baton-probe"
COPY rootfs/ /
ENTRYPOINT ["/usr/local/bin/baton-probe"]
