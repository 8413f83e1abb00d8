# The skymesh agent as a container. Build: `docker build -t skymesh .`
# Base: the official Node image; where Docker Hub cannot be reached, scripts/docker-base-image.sh
# builds an equivalent one locally from Debian packages and the npm registry.
ARG BASE_IMAGE=node:20-bookworm-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY . .
# Native modules (level, lz4) load their prebuilt binaries at run time: no install scripts needed.
# skymesh's own addon (native/, AES-GCM for the data channel) is built if the image has a compiler,
# else the build says so and the agent uses node:crypto.
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

FROM ${BASE_IMAGE}
WORKDIR /opt/skymesh
COPY package.json package-lock.json ./
COPY --from=build /src/node_modules ./node_modules
COPY bin ./bin
COPY proto ./proto
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/native ./native
RUN ln -s /opt/skymesh/bin/skymesh.js /usr/local/bin/skymesh
ENV SKYMESH_LOG_FORMAT=json
VOLUME /data
# libp2p, and the local API (published on the host's loopback by docker-compose.yml)
EXPOSE 4001 4711
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:4711/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["skymesh"]
CMD ["agent", "--data-dir", "/data", "--listen", "/ip4/0.0.0.0/tcp/4001", "--api", "0.0.0.0:4711"]
