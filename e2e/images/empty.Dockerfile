# The empty image, parked in an idle agent slot, and the real-node rig's pod
# sandbox: one static program (pause.c) that waits for SIGTERM/SIGINT, reaps
# children, ignores its arguments and uses almost no memory.
FROM scratch
LABEL dev.baton.image="ghcr.io/baton-dev/baton-empty"
COPY rootfs/ /
ENTRYPOINT ["/pause"]
