#!/usr/bin/env node
// A small Node.js client of ganserve.v1.Generator: lists the server's models and
// saves a grid of sampled images as a grayscale PNG. The contract is loaded at
// run time from protos/ (no generated code), so it cannot drift from the server.
//
//   node client.js --target localhost:50051 --model mnist-cdcgan --count 16 \
//        --seed 1 --label 7 --out sevens.png
//   node client.js --target gan.example:443 --tls-ca ca.pem \
//        --tls-cert client.pem --tls-key client.key --token "$TOKEN"   # mTLS + token
//
// Options: --target (default $GANSERVE_TARGET or localhost:50051), --model
// (default: the first ready model), --count, --seed, --label, --cols, --scale,
// --out (default grid.png), --token (default $GANSERVE_TOKEN), --timeout seconds.
// TLS (as the Python client): --tls (flag; system roots), --tls-ca FILE (PEM CA),
// --tls-cert FILE + --tls-key FILE (client certificate: mutual TLS),
// --tls-server-name NAME (expected name in the server's certificate, also the SNI).
// Any --tls-* option turns TLS on. The token goes out as `authorization: Bearer
// <token>`: as call credentials over TLS, as per-call metadata over plaintext
// (gRPC sends no call credentials on an insecure channel).
"use strict";

const fs = require("fs");
const path = require("path");
const zlib = require("zlib");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");
const EXIT = { INVALID_ARGUMENT: 2, NOT_FOUND: 3, UNAVAILABLE: 4, DEADLINE_EXCEEDED: 4, UNAUTHENTICATED: 5 };

// Command-line spelling -> option key, for the options with a dash.
const ALIASES = { "tls-ca": "tlsCa", "tls-cert": "tlsCert", "tls-key": "tlsKey",
  "tls-server-name": "tlsServerName" };
const FLAGS = new Set(["tls"]); // options without a value

function parseArgs(argv) {
  const opts = {
    target: process.env.GANSERVE_TARGET || "localhost:50051",
    model: "", count: 16, seed: null, label: null, cols: 0, scale: 2,
    out: "grid.png", token: process.env.GANSERVE_TOKEN || "", timeout: 30,
    tls: false, tlsCa: "", tlsCert: "", tlsKey: "", tlsServerName: "",
  };
  const numeric = new Set(["count", "label", "cols", "scale", "timeout"]);
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, "");
    const key = ALIASES[name] || (Object.values(ALIASES).includes(name) ? "" : name);
    if (FLAGS.has(key)) {
      opts[key] = true;
      i -= 1; // a flag takes no value
      continue;
    }
    const value = argv[i + 1];
    if (!(key in opts) || value === undefined) throw new UsageError(`bad option ${argv[i]}`);
    if (numeric.has(key)) {
      if (!/^-?\d+$/.test(value)) throw new UsageError(`--${key} must be an integer, got ${value}`);
      opts[key] = Number(value);
    } else {
      opts[key] = value; // seed stays a string: uint64 does not fit a JS number
    }
  }
  if (opts.seed !== null && !/^\d+$/.test(opts.seed)) throw new UsageError("--seed must be >= 0");
  if (!opts.tlsCert !== !opts.tlsKey) {
    throw new UsageError("--tls-cert and --tls-key go together (client certificate for mTLS)");
  }
  return opts;
}

// TLS is on with --tls or any --tls-* option (as the Python client's ChannelConfig).
function usesTls(opts) {
  return Boolean(opts.tls || opts.tlsCa || opts.tlsCert || opts.tlsKey || opts.tlsServerName);
}

function readPem(file, option) {
  if (!file) return null;
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new UsageError(`cannot read --${option} ${file}: ${err.code || err.message}`);
  }
}

function tokenMetadata(token) {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

// Channel credentials: insecure, or TLS (CA / system roots, optional client
// certificate) with the bearer token composed in as call credentials. grpc-js
// refuses call credentials on an insecure channel: there call() adds the token.
function channelCredentials(opts) {
  if (!usesTls(opts)) return grpc.credentials.createInsecure();
  const tls = grpc.credentials.createSsl(
    readPem(opts.tlsCa, "tls-ca"), readPem(opts.tlsKey, "tls-key"), readPem(opts.tlsCert, "tls-cert"));
  if (!opts.token) return tls;
  const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) =>
    callback(null, tokenMetadata(opts.token)));
  return grpc.credentials.combineChannelCredentials(tls, bearer);
}

function channelOptions(opts) {
  const options = { "grpc.max_receive_message_length": 64 * 1024 * 1024 };
  if (opts.tlsServerName) options["grpc.ssl_target_name_override"] = opts.tlsServerName;
  return options;
}

// A Generator client for the parsed options (TLS, mTLS, token as above).
function connect(opts, Generator = loadService()) {
  return new Generator(opts.target, channelCredentials(opts), channelOptions(opts));
}

class UsageError extends Error {}

function loadService() {
  const definition = protoLoader.loadSync("ganserve/v1/generator.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).ganserve.v1.Generator;
}

// Promise wrapper of a unary call with a deadline; over plaintext it carries the
// bearer token itself (over TLS the channel's call credentials do).
function call(client, method, request, opts) {
  const metadata = opts.token && !usesTls(opts) ? tokenMetadata(opts.token) : new grpc.Metadata();
  const deadline = new Date(Date.now() + opts.timeout * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (err, response) =>
      err ? reject(err) : resolve(response));
  });
}

// ------------------------------------------------------------------ PNG writer
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const byte of buf) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

// 8-bit grayscale PNG from a row-major Uint8Array of width*height pixels.
function encodePng(pixels, width, height) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 0, 0, 0, 0], 8); // bit depth 8, grayscale, deflate, no filter, no interlace
  const raw = Buffer.alloc((width + 1) * height); // each row: filter byte 0, then pixels
  for (let y = 0; y < height; y++) {
    raw.set(pixels.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", zlib.deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

// Tile N uint8 (H, W) images (first channel) into one picture, 2 px apart, scaled.
function grid(images, opts) {
  const [channels, h, w] = images.shape;
  const n = images.count;
  const cols = opts.cols || Math.ceil(Math.sqrt(n));
  const rows = Math.ceil(n / cols);
  const pad = 2;
  const s = opts.scale;
  const width = (cols * w + (cols + 1) * pad) * s;
  const height = (rows * h + (rows + 1) * pad) * s;
  const out = new Uint8Array(width * height);
  for (let i = 0; i < n; i++) {
    const x0 = (pad + (i % cols) * (w + pad)) * s;
    const y0 = (pad + Math.floor(i / cols) * (h + pad)) * s;
    const base = i * channels * h * w; // (N, C, H, W): channel 0 of image i
    for (let y = 0; y < h * s; y++) {
      for (let x = 0; x < w * s; x++) {
        out[(y0 + y) * width + x0 + x] = images.data[base + Math.floor(y / s) * w + Math.floor(x / s)];
      }
    }
  }
  return { pixels: out, width, height };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const client = connect(opts);
  try {
    const listing = await call(client, "ListModels", {}, opts);
    for (const m of listing.models) {
      const fid = m.quality.fid === undefined ? "-" : m.quality.fid.toFixed(1);
      const kind = m.kind.replace("MODEL_KIND_", "").toLowerCase();
      const state = m.state.replace("LOAD_STATE_", "").toLowerCase();
      console.log(`${m.name}\t${m.version}\t${kind}\tlatent ${m.latent_dim}\t` +
        `classes ${m.class_names.length}\tfid ${fid}\t${state}`);
    }
    const ready = listing.models.find((m) => m.state === "LOAD_STATE_READY");
    const model = opts.model || (ready && ready.name);
    if (!model) throw new UsageError("no ready model on the server; pass --model");
    const request = { model, count: opts.count, encoding: "ENCODING_UINT8" };
    if (opts.seed !== null) request.seed = opts.seed;
    if (opts.label !== null) request.labels = [opts.label];
    const response = await call(client, "Sample", request, opts);
    const { pixels, width, height } = grid(response.images, opts);
    fs.writeFileSync(opts.out, encodePng(pixels, width, height));
    console.log(`wrote ${response.images.count} images of ${model} (seed ${response.seed}) ` +
      `to ${opts.out} (${width}x${height})`);
  } finally {
    client.close();
  }
}

if (require.main === module) {
  main().catch((err) => {
    if (err instanceof UsageError) {
      console.error(`ganserve-node: error: ${err.message}`);
      process.exit(2);
    }
    const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code);
    console.error(`ganserve-node: error: ${codeName || "ERROR"}: ${err.details || err.message}`);
    process.exit(EXIT[codeName] || 1);
  });
}

module.exports = { parseArgs, usesTls, channelCredentials, channelOptions, connect, loadService, call };
