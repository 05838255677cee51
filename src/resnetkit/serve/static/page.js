// The page of `resnetkit serve`: no build step, no CDN. It asks /v1/model what the server holds, then
// sends the chosen image to /v1/predict and /v1/explain (classifiers) or /v1/segment (segmentation).
"use strict";
const $ = (id) => document.getElementById(id);
let model = null;

function pct(p) { return (100 * p).toFixed(1) + "%"; }

async function call(path, file) {
  const form = new FormData();
  form.append("file", file, file.name || "image");
  const r = await fetch(path, { method: "POST", body: form });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.status);
  return body.results[0];
}

function showBars(predictions) {
  const ol = $("bars");
  ol.replaceChildren();
  for (const p of predictions) {
    const li = document.createElement("li");
    li.className = "pred";
    li.dataset.cls = p.class;
    li.dataset.prob = p.prob;
    const name = document.createElement("span"); name.className = "name"; name.textContent = p.class;
    const track = document.createElement("span");
    const bar = document.createElement("span"); bar.className = "bar"; bar.style.display = "block";
    bar.style.width = Math.max(1, 100 * p.prob) + "%";
    track.append(bar);
    const v = document.createElement("span"); v.className = "pct"; v.textContent = pct(p.prob);
    li.append(name, track, v);
    ol.append(li);
  }
  $("top5").hidden = false;
}

function showLegend(shares) {
  const ul = $("legend");
  ul.replaceChildren();
  for (const [name, share] of Object.entries(shares)) {
    const li = document.createElement("li");
    li.className = "legend-item";
    li.dataset.cls = name;
    const sw = document.createElement("span"); sw.className = "swatch";
    sw.style.background = (model.palette || {})[name] || "#000";
    li.append(sw, document.createTextNode(`${name} ${pct(share)}`));
    ul.append(li);
  }
}

async function handle(file) {
  if (!file || !model) return;
  $("status").textContent = "";
  $("results").hidden = false;
  for (const id of ["top5", "cam-fig", "seg-fig"]) $(id).hidden = true;
  $("preview").src = URL.createObjectURL(file);
  document.body.dataset.state = "working";
  try {
    if (model.task === "segmentation") {
      const r = await call("/v1/segment?overlay=true", file);
      $("seg").src = "data:image/png;base64," + r.overlay_png;
      showLegend(r.shares);
      $("seg-fig").hidden = false;
    } else {
      const [pred, cam] = await Promise.all([call("/v1/predict?top_k=5", file), call("/v1/explain", file)]);
      showBars(pred.predictions);
      $("cam").src = "data:image/png;base64," + cam.cam_png;
      $("cam-cap").textContent = `Grad-CAM of ${cam.class} at ${cam.layer}`;
      $("cam-fig").hidden = false;
    }
    document.body.dataset.state = "done";
  } catch (e) {
    $("status").textContent = "error: " + e.message;
    document.body.dataset.state = "error";
  }
}

async function start() {
  const r = await fetch("/v1/model");
  model = await r.json();
  const m = Object.entries(model.metrics || {}).map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(4) : v}`);
  const pre = model.preprocessing;
  $("card").textContent = `${model.arch} (${model.task}), ${model.num_classes} classes` +
    (pre.size ? `, input ${pre.size[0]}x${pre.size[1]} ${pre.channel_order}` : "") +
    (m.length ? `, ${m.join(", ")}` : "") +
    `, backend ${model.backend ? model.backend.backend : "warming up"} on ${model.device}`;
  document.body.dataset.state = "idle";
}

$("file").addEventListener("change", (e) => handle(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handle(e.dataTransfer.files[0]); });
start();
