#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672: starts the local
# rabbitmq-server when one is installed, otherwise explains how to start compose/.
set -euo pipefail
port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if port_open; then exit 0; fi
if command -v rabbitmq-server >/dev/null 2>&1; then
  echo "ensure-broker: RabbitMQ is not answering on 127.0.0.1:5672; starting rabbitmq-server -detached" >&2
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do
    if port_open && rabbitmqctl -q await_startup >/dev/null 2>&1; then
      echo "ensure-broker: RabbitMQ is up" >&2
      exit 0
    fi
    sleep 1
  done
  echo "ensure-broker: RabbitMQ did not come up within 120 s; see /var/log/rabbitmq/" >&2
  exit 1
fi
cat >&2 <<'MSG'
ensure-broker: no broker answers on 127.0.0.1:5672 and rabbitmq-server is not installed.
Start one with Docker:   docker compose -f compose/docker-compose.yml up -d rabbitmq
or point AMQP_URL at an existing broker.
MSG
exit 1
