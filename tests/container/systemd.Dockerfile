# For tests/test_deploy.py only: the tasksync image with systemd as PID 1, the unit that
# `tasksync deploy systemd` prints installed as /etc/systemd/system/tasksync.service, a
# config with a SQLite archive, and the built-in simulator as a second unit to sync from.
# The token is a test value: this image is made by the test and thrown away.
ARG IMAGE=localhost/tasksync:latest
FROM ${IMAGE}
USER root
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd \
 && rm -rf /var/lib/apt/lists/*
COPY systemd-test.toml /etc/tasksync/tasksync.toml
COPY systemd-sim.service /etc/systemd/system/sim.service
RUN printf 'TASKSYNC_TOKEN=tok-systemd-test\n' > /etc/tasksync/tasksync.env \
 && chgrp tasksync /etc/tasksync/tasksync.env && chmod 0640 /etc/tasksync/tasksync.env \
 && tasksync deploy systemd > /etc/systemd/system/tasksync.service
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
