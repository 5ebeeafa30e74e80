#!/usr/bin/env node
// A small Node.js client of ganserve.v1.Generator: samples images of a model and saves
// them as a grid (a grayscale PNG) or as a .npy array, like `ganserve sample`. Without
// --model it lists the server's models and samples the first ready one. The contract is
// loaded at run time from protos/ (no generated code), so it cannot drift from the server.
//
//   node client.js --target localhost:50051 --model mnist-cdcgan --count 16 \
//        --seed 1 --label 7 --truncation 0.8 --out sevens.png
//   node client.js --target gan.example:443 --tls-ca ca.pem \
//        --tls-cert client.pem --tls-key client.key --token "$TOKEN"   # mTLS + token
//
// Sampling options, as `ganserve sample`: --model, --model-version, --count (16), --seed
// (image i uses seed + i), --truncation, --label (index or class name, or a comma list:
// one per image), --out (grid.png), --format png|npy (default: from --out), --cols,
// --scale (2). Connection: --target (default $GANSERVE_TARGET or localhost:50051; a host
// without a port means 50051), --token (default $GANSERVE_TOKEN), --timeout seconds of
// each unary call (30) and, only when given, the deadline of the whole sample stream
// (without it the stream has none), as in the Python client,
// --retries (3: extra attempts on UNAVAILABLE / RESOURCE_EXHAUSTED, 0 to 4), --keepalive
// seconds between pings (300; 0: off). TLS (as the Python client): --tls (flag; system
// roots), --tls-ca FILE (PEM CA), --tls-cert FILE + --tls-key FILE (client certificate:
// mutual TLS), --tls-server-name NAME (expected name in the server's certificate, also
// the SNI). Any --tls-* option turns TLS on. The token goes out as `authorization: Bearer
// <token>`: as call credentials over TLS, as per-call metadata over plaintext (gRPC sends
// no call credentials on an insecure channel).
"use strict";

const fs = require("fs");
const path = require("path");
const zlib = require("zlib");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");
const EXIT = { INVALID_ARGUMENT: 2, NOT_FOUND: 3, UNAVAILABLE: 4, DEADLINE_EXCEEDED: 4,
  RESOURCE_EXHAUSTED: 4, UNAUTHENTICATED: 5 };
const DEFAULT_PORT = 50051; // the server's default --port
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024; // the server's default limit
// The Python client's channel settings (clients/_channel.py), so both behave alike.
const RETRY_SERVICES = ["ganserve.v1.Generator", "grpc.health.v1.Health"];
const RETRYABLE = ["UNAVAILABLE", "RESOURCE_EXHAUSTED"];
const RETRY_INITIAL_BACKOFF_S = 0.1;
const RETRY_MAX_BACKOFF_S = 2.0;
// Retry token bucket (retryThrottling, gRFC A6), the Python client's defaults.
const RETRY_MAX_TOKENS = 10;
const RETRY_TOKEN_RATIO = 0.1;
const KEEPALIVE_TIMEOUT_MS = 20000;
// PIL's Image.MAX_IMAGE_PIXELS, the Python CLI's limit for a grid: PIL-based tools do
// not open a larger picture, and the whole grid is made in memory.
const MAX_PICTURE_PIXELS = 89478485;

// Command-line spelling -> option key, for the options with a dash.
const ALIASES = { "tls-ca": "tlsCa", "tls-cert": "tlsCert", "tls-key": "tlsKey",
  "tls-server-name": "tlsServerName", "model-version": "modelVersion" };
const FLAGS = new Set(["tls"]); // options without a value
const INTEGERS = { count: 1, cols: 1, scale: 1, retries: 0, keepalive: 0 }; // with their minimum
const NUMBERS = new Set(["timeout", "truncation"]); // finite numbers > 0

function parseArgs(argv) {
  const opts = {
    target: process.env.GANSERVE_TARGET || `localhost:${DEFAULT_PORT}`,
    model: "", modelVersion: "", count: 16, seed: null, label: null, truncation: null,
    cols: 0, scale: 2, out: "grid.png", format: "",
    token: process.env.GANSERVE_TOKEN || "", timeout: 30, retries: 3, keepalive: 300,
    tls: false, tlsCa: "", tlsCert: "", tlsKey: "", tlsServerName: "",
  };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, "");
    const key = ALIASES[name] || (Object.values(ALIASES).includes(name) ? "" : name);
    if (FLAGS.has(key)) {
      opts[key] = true;
      i -= 1; // a flag takes no value
      continue;
    }
    const value = argv[i + 1];
    if (!argv[i].startsWith("--") || !(key in opts) || value === undefined) {
      throw new UsageError(`bad option ${argv[i]}`);
    }
    if (key in INTEGERS) {
      if (!/^\d+$/.test(value) || Number(value) < INTEGERS[key]) {
        throw new UsageError(`--${name} must be a whole number >= ${INTEGERS[key]}, got ${value}`);
      }
      opts[key] = Number(value);
    } else if (NUMBERS.has(key)) {
      const number = Number(value);
      if (value.trim() === "" || !Number.isFinite(number) || number <= 0) {
        throw new UsageError(`--${name} must be a finite number > 0, got ${value}`);
      }
      opts[key] = number;
      if (key === "timeout") opts.timeoutGiven = true;
    } else {
      opts[key] = value; // seed stays a string: uint64 does not fit a JS number
    }
  }
  if (opts.seed !== null && !/^\d+$/.test(opts.seed)) throw new UsageError("--seed must be >= 0");
  if (opts.retries > 4) throw new UsageError(`--retries must be in [0, 4], got ${opts.retries}`);
  if (opts.format && !["png", "npy"].includes(opts.format)) {
    throw new UsageError(`--format must be png or npy, got ${opts.format}`);
  }
  opts.format = opts.format || (opts.out.toLowerCase().endsWith(".npy") ? "npy" : "png");
  if (!opts.tlsCert !== !opts.tlsKey) {
    throw new UsageError("--tls-cert and --tls-key go together (client certificate for mTLS)");
  }
  opts.target = withDefaultPort(opts.target);
  return opts;
}

// `target` with the server's default port when it names a host without one (gRPC would
// dial 443): localhost, 10.0.0.5, [::1], ::1, dns:///name. host:port and other schemes
// (unix:, ipv4:, ...) are kept. The rule of the Python client's with_default_port.
function withDefaultPort(target) {
  target = target.trim();
  if (target.startsWith("dns:")) {
    const rest = target.slice(4);
    const cut = rest.startsWith("//") ? rest.indexOf("/", 2) + 1 : 0;
    if ((rest.startsWith("//") && cut === 0) || !rest.slice(cut)) return target;
    return "dns:" + rest.slice(0, cut) + hostWithPort(rest.slice(cut));
  }
  return hostWithPort(target);
}

function hostWithPort(text) {
  if (!text) return text;
  if (text.startsWith("[")) return text.endsWith("]") ? `${text}:${DEFAULT_PORT}` : text;
  if ((text.match(/:/g) || []).length >= 2 && !text.includes("/")) {
    const colon = text.lastIndexOf(":");
    if (/^\d+$/.test(text.slice(colon + 1)) && isIp(text.slice(0, colon))) return text;
    if (isIp(text)) return `[${text}]:${DEFAULT_PORT}`;
  }
  return text.includes(":") ? text : `${text}:${DEFAULT_PORT}`;
}

function isIp(text) {
  return require("net").isIP(text) !== 0;
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

// gRPC's own retries (a service-config retryPolicy): a call is retried only while no
// response has reached the application, with jittered exponential backoff, within the
// call's deadline, after the server's grpc-retry-pushback-ms when it sends one; the
// token bucket stops retries while most attempts fail. Round robin over every address
// of the target.
function serviceConfig(opts) {
  const config = { loadBalancingConfig: [{ round_robin: {} }] };
  if (opts.retries > 0) { // grpc-js requires maxAttempts >= 2 in a retry policy
    config.methodConfig = [{
      name: RETRY_SERVICES.map((service) => ({ service })),
      retryPolicy: {
        maxAttempts: opts.retries + 1,
        initialBackoff: `${RETRY_INITIAL_BACKOFF_S.toFixed(3)}s`,
        maxBackoff: `${RETRY_MAX_BACKOFF_S.toFixed(3)}s`,
        backoffMultiplier: 2,
        retryableStatusCodes: RETRYABLE,
      },
    }];
    config.retryThrottling = { maxTokens: RETRY_MAX_TOKENS, tokenRatio: RETRY_TOKEN_RATIO };
  }
  return config;
}

function channelOptions(opts) {
  const options = {
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.enable_retries": opts.retries > 0 ? 1 : 0,
    "grpc.service_config": JSON.stringify(serviceConfig(opts)),
    // Our config, not one published in DNS TXT records.
    "grpc.service_config_disable_resolution": 1,
  };
  if (opts.keepalive > 0) {
    // Servers reject pings more often than every 5 min by default (GOAWAY too_many_pings).
    options["grpc.keepalive_time_ms"] = opts.keepalive * 1000;
    options["grpc.keepalive_timeout_ms"] = KEEPALIVE_TIMEOUT_MS;
  }
  if (opts.tlsServerName) options["grpc.ssl_target_name_override"] = opts.tlsServerName;
  return options;
}

// A Generator client for the parsed options (TLS, mTLS, token, retries, keepalive).
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

// Over plaintext the call carries the bearer token itself (over TLS the channel's call
// credentials do).
function callMetadata(opts) {
  return opts.token && !usesTls(opts) ? tokenMetadata(opts.token) : new grpc.Metadata();
}

// Promise wrapper of a unary call with a deadline.
function call(client, method, request, opts) {
  const deadline = new Date(Date.now() + opts.timeout * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, callMetadata(opts), { deadline }, (err, response) =>
      err ? reject(err) : resolve(response));
  });
}

// SampleStream: calls onChunk(response) for every chunk; resolves at the end. Counts
// beyond one response (max_images_per_request, message size) work as in one call.
function sampleStream(client, request, opts, onChunk) {
  return new Promise((resolve, reject) => {
    const callOpts = opts.timeoutGiven ? { deadline: new Date(Date.now() + opts.timeout * 1000) } : {};
    const stream = client.SampleStream(request, callMetadata(opts), callOpts);
    stream.on("data", (chunk) => {
      try {
        onChunk(chunk);
      } catch (err) {
        stream.cancel();
        reject(err);
      }
    });
    stream.on("error", reject);
    stream.on("end", resolve);
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

// Width and height of the grid of n images of h x w, 2 px apart, scaled.
function gridSize(n, h, w, opts) {
  const cols = opts.cols || Math.ceil(Math.sqrt(n));
  const rows = Math.ceil(n / cols);
  const pad = 2;
  return { cols, rows, width: (cols * w + (cols + 1) * pad) * opts.scale,
    height: (rows * h + (rows + 1) * pad) * opts.scale };
}

// Tile N uint8 (C, H, W) images (first channel) into one picture, 2 px apart, scaled.
function grid(images, opts) {
  const [channels, h, w] = images.shape;
  const n = images.count;
  const { cols, width, height } = gridSize(n, h, w, opts);
  const pad = 2;
  const s = opts.scale;
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

// ------------------------------------------------------------------ .npy writer
// The array of `count` images of shape (C, H, W): (N, H, W) for one channel, (N, H, W, C)
// otherwise, as the Python client returns them.
function arrayShape(count, [channels, h, w]) {
  return channels === 1 ? [count, h, w] : [count, h, w, channels];
}

// The header of a version 1.0 .npy file of little-endian float32 (numpy's format spec).
function npyHeader(count, imageShape) {
  const shape = arrayShape(count, imageShape);
  let dict = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}), }`;
  const total = 10 + dict.length + 1; // magic + version + length, the dict, "\n"
  dict += " ".repeat((64 - (total % 64)) % 64) + "\n"; // the data starts 64-byte aligned
  const header = Buffer.alloc(10);
  header.write("\x93NUMPY", 0, "latin1");
  header.set([1, 0], 6);
  header.writeUInt16LE(dict.length, 8);
  return Buffer.concat([header, Buffer.from(dict, "latin1")]);
}

// (n, C, H, W) float32 bytes as (n, H, W, C): channels last, as the Python client returns.
// Moved as 32-bit words (byte order kept), from an aligned copy: a decoded protobuf
// field may start at any byte offset.
function channelsLast(data, n, [channels, h, w]) {
  if (channels === 1) return data;
  const src = new Uint32Array(new Uint8Array(data).buffer);
  const dst = new Uint32Array(src.length);
  const plane = h * w;
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < channels; c++) {
      for (let p = 0; p < plane; p++) dst[(i * plane + p) * channels + c] = src[(i * channels + c) * plane + p];
    }
  }
  return Buffer.from(dst.buffer);
}

// ------------------------------------------------------------------ sampling
// A class index, given as a number or as a class name (case-insensitive).
function labelIndex(text, info) {
  text = text.trim();
  if (/^-?\d+$/.test(text)) return Number(text);
  const names = info.class_names.map((n) => n.toLowerCase());
  const index = names.indexOf(text.toLowerCase());
  if (index < 0) {
    throw new UsageError(`unknown class '${text}' for ${info.name}; classes: ${names.join(", ") || "none"}`);
  }
  return index;
}

function sampleRequest(model, info, opts) {
  const request = { model, version: opts.modelVersion, count: opts.count,
    encoding: opts.format === "npy" ? "ENCODING_FLOAT32" : "ENCODING_UINT8" };
  if (opts.seed !== null) request.seed = opts.seed;
  if (opts.truncation !== null) request.truncation = opts.truncation;
  if (opts.label !== null) request.labels = opts.label.split(",").map((t) => labelIndex(t, info));
  return request;
}

function formatBytes(n) {
  for (const [unit, scale] of [["TB", 1e12], ["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) {
    if (n >= scale) return `${(n / scale).toFixed(1)} ${unit}`;
  }
  return `${n} bytes`;
}

// Refuse, before sampling, an output that cannot hold the request (as the Python CLI).
function checkOutput(shape, opts) {
  const [channels, h, w] = shape;
  const folder = path.dirname(path.resolve(opts.out));
  if (!fs.existsSync(folder) || !fs.statSync(folder).isDirectory()) {
    throw new UsageError(`cannot write ${opts.out}: no directory ${folder}`);
  }
  if (opts.format === "png") {
    const { width, height } = gridSize(opts.count, h, w, opts);
    if (width * height > MAX_PICTURE_PIXELS) {
      throw new UsageError(`a grid of ${opts.count} images at --scale ${opts.scale} would be ` +
        `${width}x${height} pixels, over ${MAX_PICTURE_PIXELS}; sample fewer images, lower ` +
        "--scale, or write an array: --out FILE.npy");
    }
    return;
  }
  const size = opts.count * channels * h * w * 4;
  if (fs.statfsSync) { // Node >= 18.15
    const stats = fs.statfsSync(folder);
    const free = stats.bavail * stats.bsize;
    if (size > free) {
      throw new UsageError(`${opts.count} images make ${formatBytes(size)}, more than the ` +
        `${formatBytes(free)} free for ${opts.out}`);
    }
  }
  if (size > 1 << 30) {
    console.error(`ganserve-node: warning: ${opts.count} images make ${formatBytes(size)} in ${opts.out}`);
  }
}

// Sample into opts.out: a PNG grid (assembled in memory: checked above) or a .npy file
// written chunk by chunk at each chunk's offset. Returns the first seed.
async function sampleToFile(client, model, info, opts) {
  const shape = info.image_shape.length === 3 ? info.image_shape : [1, 28, 28];
  checkOutput(shape, opts);
  const request = sampleRequest(model, info, opts);
  const perImage = shape[0] * shape[1] * shape[2] * (opts.format === "npy" ? 4 : 1);
  let seed = null;
  let received = 0;
  if (opts.format === "npy") {
    const tmp = path.join(path.dirname(opts.out), `.${path.basename(opts.out)}.${process.pid}.part`);
    let fd = fs.openSync(tmp, "w");
    try {
      const header = npyHeader(opts.count, shape);
      fs.writeSync(fd, header);
      await sampleStream(client, request, opts, (response) => {
        const n = response.images.count;
        const data = channelsLast(response.images.data, n, shape);
        fs.writeSync(fd, data, 0, data.length, header.length + Number(response.offset) * perImage);
        received += n;
        seed = response.seed;
      });
      fs.closeSync(fd);
      fd = null;
      if (received !== opts.count) throw new Error(`stream ended after ${received} of ${opts.count} images`);
      fs.renameSync(tmp, opts.out); // only a complete array gets the name asked for
    } finally {
      if (fd !== null) fs.closeSync(fd);
      if (fs.existsSync(tmp)) fs.unlinkSync(tmp);
    }
    return { seed, size: `${arrayShape(opts.count, shape).join("x")} float32` };
  }
  const data = Buffer.alloc(opts.count * perImage);
  await sampleStream(client, request, opts, (response) => {
    response.images.data.copy(data, Number(response.offset) * perImage);
    received += response.images.count;
    seed = response.seed;
  });
  if (received !== opts.count) throw new Error(`stream ended after ${received} of ${opts.count} images`);
  const { pixels, width, height } = grid({ shape, count: opts.count, data }, opts);
  fs.writeFileSync(opts.out, encodePng(pixels, width, height));
  return { seed, size: `${width}x${height}` };
}

function printModels(models) {
  for (const m of models) {
    const fid = m.quality.fid === undefined ? "-" : m.quality.fid.toFixed(1);
    const kind = m.kind.replace("MODEL_KIND_", "").toLowerCase();
    const state = m.state.replace("LOAD_STATE_", "").toLowerCase();
    console.log(`${m.name}\t${m.version}\t${kind}\tlatent ${m.latent_dim}\t` +
      `classes ${m.class_names.length}\tfid ${fid}\t${state}`);
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const client = connect(opts);
  try {
    let model = opts.model;
    if (!model) { // no model named: show what there is and take the first ready one
      const listing = await call(client, "ListModels", {}, opts);
      printModels(listing.models);
      const ready = listing.models.find((m) => m.state === "LOAD_STATE_READY");
      if (!ready) throw new UsageError("no ready model on the server; pass --model");
      model = ready.name;
    }
    const info = await call(client, "GetModel", { model, version: opts.modelVersion }, opts);
    const { seed, size } = await sampleToFile(client, model, info, opts);
    console.log(`wrote ${opts.count} images of ${model} (seed ${seed}) to ${opts.out} (${size})`);
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

module.exports = { parseArgs, withDefaultPort, usesTls, channelCredentials, serviceConfig,
  channelOptions, connect, loadService, call, sampleStream, npyHeader };
