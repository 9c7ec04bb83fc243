# A test-only agent image: baton-agent built with the `test-hooks` feature
# (`cargo xtask agent-hooks`), whose faults are switched on by the image's
# environment, so a scenario can roll out a bad build like any other image:
#   HOOK_NAME=BATON_TEST_BREAK_PROGRAM HOOK_VALUE=baton_connect4   the verifier rejects it
#   HOOK_NAME=BATON_TEST_REFUSE_ONE_IN HOOK_VALUE=4                 it refuses 1 connect in 4
# Never published: only e2e/images/build.sh --test-images builds it.
FROM scratch
LABEL dev.baton.image="ghcr.io/baton-dev/baton-agent"
COPY rootfs/ /
ARG HOOK_NAME
ARG HOOK_VALUE
ENV ${HOOK_NAME}=${HOOK_VALUE}
ENTRYPOINT ["/usr/local/bin/baton-agent", "run"]
