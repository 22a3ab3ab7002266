#!/usr/bin/env bash
# The Nest tests again, against NestJS 12 (ESM-only packages, which the CommonJS build loads
# through Node's require(esm), Node >= 20.19), in a throwaway copy of the tracked files. The main
# run (`npm test`) uses NestJS 11, the devDependency.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(mktemp -d /tmp/offload-nest12-XXXXXX)"
trap 'rm -rf "$dir"' EXIT
(cd "$root" && git ls-files -z | xargs -0 cp --parents -t "$dir")
cd "$dir"
npm install --no-audit --no-fund --save-dev \
  @nestjs/common@^12 @nestjs/core@^12 @nestjs/platform-express@^12 @nestjs/testing@^12 \
  @nestjs/platform-fastify@^12
node -e "console.log('nest', require('@nestjs/core/package.json').version)"
npm test -- nest
