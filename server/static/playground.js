// ganserve playground: every picture is fetched from this server's REST API
// (/v1/models/...), with the optional bearer token; errors show the server's message.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "ganserve.token";
  const QUALITY = ["fid", "precision", "recall", "cond_accuracy", "class_entropy"];
  let models = [];
  let model = null;

  // ---------------------------------------------------------------- requests

  function authHeaders() {
    const token = $("token").value.trim();
    return token ? { Authorization: "Bearer " + token } : {};
  }

  function apiUrl(path, params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== null && value !== undefined && value !== "") query.set(key, value);
    }
    const q = query.toString();
    return path + (q ? "?" + q : "");
  }

  // The server's {"error", "code"} body when there is one, else the HTTP status.
  async function failure(resp) {
    let text = `HTTP ${resp.status} ${resp.statusText}`.trim();
    try {
      const body = await resp.json();
      if (body && body.error) text = body.code ? `${body.error} (${body.code})` : body.error;
    } catch (_) { /* not JSON: keep the status line */ }
    return new Error(text);
  }

  async function getJson(path) {
    const resp = await fetch(path, { headers: authHeaders() });
    if (!resp.ok) throw await failure(resp);
    return resp.json();
  }

  // An image panel: its <img>, status line and error line; one request at a time
  // (a newer one aborts the older), the picture fetched as a blob.
  function imagePanel(name) {
    const panel = {
      img: $(name), status: $(name + "-status"), error: $(name + "-error"),
      box: $(name).closest("figure"), controller: null, url: null,
    };
    panel.load = async (path, params) => {
      if (panel.controller) panel.controller.abort();
      const controller = (panel.controller = new AbortController());
      const started = performance.now();
      panel.box.classList.add("loading");
      panel.box.dataset.state = "loading";
      panel.status.textContent = "loading…";
      try {
        const resp = await fetch(apiUrl(path, params),
          { headers: authHeaders(), signal: controller.signal });
        if (!resp.ok) throw await failure(resp);
        const blob = await resp.blob();
        if (controller.signal.aborted) return;
        const url = URL.createObjectURL(blob);
        panel.img.src = url;
        await panel.img.decode();
        if (controller !== panel.controller) { // a newer request is under way: it reports
          URL.revokeObjectURL(url);
          return;
        }
        if (panel.url) URL.revokeObjectURL(panel.url);
        panel.url = url;
        panel.error.hidden = true;
        panel.box.dataset.state = "ok";
        const ms = Math.round(performance.now() - started);
        panel.status.textContent = `${panel.img.naturalWidth}×${panel.img.naturalHeight} px, ${ms} ms`;
      } catch (err) {
        if (controller !== panel.controller) return; // superseded by a newer request
        panel.error.textContent = err.message || String(err);
        panel.error.hidden = false;
        panel.box.dataset.state = "error";
        panel.status.textContent = "failed";
      } finally {
        if (controller === panel.controller) {
          panel.controller = null;
          panel.box.classList.remove("loading");
        }
      }
    };
    return panel;
  }

  const grid = imagePanel("grid");
  const slerp = imagePanel("slerp");
  const arith = imagePanel("arith");

  function debounce(fn, ms) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  // ---------------------------------------------------------------- form values

  const num = (id) => $(id).value.trim();
  const conditional = () => Boolean(model && model.kind === "conditional");
  const modelPath = (what) => `/v1/models/${encodeURIComponent(model.name)}/${what}`;
  const truncation = () => ($("trunc-on").checked ? $("truncation").value : null);
  const classParam = (id) => (conditional() ? $(id).value : null);

  function sample() {
    if (!model) return;
    const params = {
      seed: num("seed"), count: $("count").value, cols: $("cols").value,
      scale: 2, truncation: truncation(), label: classParam("label"),
    };
    if (conditional() && $("blend-on").checked) {
      params.blend_label = $("blend-label").value;
      params.blend = $("blend").value;
    }
    $("grid-caption").textContent = describe(params);
    grid.load(modelPath("sample"), params);
  }

  // What the grid shows, in words: seeds, class (and blend), truncation.
  function describe(params) {
    const parts = [];
    try {
      const last = BigInt(params.seed) + BigInt(params.count) - 1n;
      parts.push(params.count > 1 ? `seeds ${params.seed}–${last}` : `seed ${params.seed}`);
    } catch (_) { /* not a whole number: the server says what is wrong */ }
    const names = (model && model.class_names) || [];
    if (params.label !== null) {
      let text = `class ${names[params.label]}`;
      if (params.blend_label !== undefined) {
        text += ` blended with ${names[params.blend_label]} at ${Number(params.blend).toFixed(2)}`;
      }
      parts.push(text);
    }
    parts.push(params.truncation ? `ψ = ${params.truncation}` : "no truncation");
    return parts.join(" · ");
  }

  function interpolate() {
    if (!model) return;
    slerp.load(modelPath("interpolate"), {
      from_seed: num("from-seed"), to_seed: num("to-seed"), steps: num("steps"),
      from_label: classParam("from-label"), to_label: classParam("to-label"),
      truncation: truncation(), method: "slerp", format: "png", scale: 2,
    });
  }

  // terms=W:S1,S2;W:S3 (weight, then the seeds whose mean latent the term is)
  function termsParam() {
    return [...document.querySelectorAll("#terms tbody tr")].map((row) => {
      const seeds = row.querySelector(".seeds").value.split(/[\s,]+/).filter(Boolean);
      return `${row.querySelector(".weight").value.trim()}:${seeds.join(",")}`;
    }).join(";");
  }

  function arithmetic() {
    if (!model) return;
    arith.load(modelPath("arithmetic"), {
      terms: termsParam(), label: classParam("arith-label"), truncation: truncation(),
      scale: 2,
    });
  }

  // ---------------------------------------------------------------- models

  function fillSelect(select, names, selected) {
    select.replaceChildren(...names.map((name, i) => new Option(name, String(i))));
    select.value = String(selected);
  }

  function showInfo(m) {
    const rows = [
      ["kind", m.kind], ["version", m.version], ["latent size", m.latent_dim],
      ["image", (m.image_shape || []).join("×")], ["dataset", m.dataset],
      ["architecture", m.architecture],
    ];
    if (m.class_names && m.class_names.length) rows.push(["classes", m.class_names.length]);
    const quality = m.quality || {};
    for (const key of QUALITY) {
      if (typeof quality[key] === "number") rows.push([key.replace("_", " "), quality[key].toFixed(3)]);
    }
    $("model-info").replaceChildren(...rows.filter(([, v]) => v !== undefined && v !== "")
      .flatMap(([k, v]) => {
        const dt = document.createElement("dt");
        const dd = document.createElement("dd");
        dt.textContent = k;
        dd.textContent = String(v);
        return [dt, dd];
      }));
  }

  function selectModel() {
    model = models.find((m) => m.name === $("model").value) || null;
    if (!model) return;
    showInfo(model);
    const names = model.class_names || [];
    const cond = conditional();
    $("class-controls").hidden = !cond;
    document.querySelectorAll(".cond").forEach((el) => { el.hidden = !cond; });
    if (cond) {
      fillSelect($("label"), names, 0);
      fillSelect($("blend-label"), names, Math.min(1, names.length - 1));
      fillSelect($("from-label"), names, 0);
      fillSelect($("to-label"), names, Math.min(1, names.length - 1));
      fillSelect($("arith-label"), names, 0);
    }
    sample();
    interpolate();
    arithmetic();
  }

  async function loadModels() {
    const box = $("models-error");
    try {
      const body = await getJson("/v1/models");
      const all = Array.isArray(body) ? body : body.models || [];
      const limit = body.limits && body.limits.max_images_per_request;
      if (limit) $("count").max = Math.min(64, limit);
      models = all.filter((m) => String(m.state).toUpperCase() === "READY");
      box.hidden = models.length > 0;
      box.textContent = models.length ? "" : "No model is ready yet.";
      const current = $("model").value;
      $("model").replaceChildren(...models.map((m) => new Option(m.name, m.name)));
      if (models.some((m) => m.name === current)) $("model").value = current;
      selectModel();
    } catch (err) {
      box.textContent = err.message;
      box.hidden = false;
    }
  }

  // ---------------------------------------------------------------- wiring

  function addTerm(weight, seeds) {
    const row = $("term-row").content.firstElementChild.cloneNode(true);
    row.querySelector(".weight").value = weight;
    row.querySelector(".seeds").value = seeds;
    row.querySelector(".remove").addEventListener("click", () => {
      if (document.querySelectorAll("#terms tbody tr").length > 1) row.remove();
    });
    $("terms").tBodies[0].append(row);
  }

  function showOutputs() {
    $("count-out").value = $("count").value;
    $("cols-out").value = $("cols").value;
    $("truncation").disabled = !$("trunc-on").checked;
    $("trunc-out").value = $("trunc-on").checked ? Number($("truncation").value).toFixed(2) : "off";
    $("blend-label").disabled = $("blend").disabled = !$("blend-on").checked;
    $("blend-out").value = Number($("blend").value).toFixed(2);
  }

  // "input" while a control moves, "change" when it is set (also by scripts and tests);
  // the handlers are debounced, so the pair costs one request.
  function on(id, handler) {
    for (const type of ["input", "change"]) $(id).addEventListener(type, handler);
  }

  function init() {
    const token = $("token");
    token.value = sessionStorage.getItem(TOKEN_KEY) || "";
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, token.value.trim());
      loadModels();
    });
    const resample = debounce(sample, 250);
    const reslerp = debounce(interpolate, 300);
    for (const id of ["seed", "count", "cols", "truncation", "trunc-on", "label",
      "blend-on", "blend-label", "blend"]) {
      on(id, () => { showOutputs(); resample(); });
    }
    for (const id of ["truncation", "trunc-on", "from-seed", "to-seed", "from-label",
      "to-label", "steps"]) on(id, reslerp);
    $("random-seed").addEventListener("click", () => {
      $("seed").value = Math.floor(Math.random() * 2 ** 31);
      sample();
    });
    $("model").addEventListener("change", selectModel);
    $("add-term").addEventListener("click", () => addTerm(1, ""));
    $("compute").addEventListener("click", arithmetic);
    addTerm(1, "1,2,3");
    addTerm(-1, "4,5");
    addTerm(1, "6");
    showOutputs();
    loadModels();
  }

  init();
})();
