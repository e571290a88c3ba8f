// The case page of `medae view`: the scan, its heat map and candidate outlines in NiiVue.
// Reads OUT/<case>/{image,anomaly_map,candidates}.nii.gz, result.json and candidates.csv from
// the server that serves this page; nothing else.  State for tests: window.medae.
import { Niivue, SHOW_RENDER } from "/_medae/niivue/niivue.js";

const $ = (id) => document.getElementById(id);
const state = { ready: false, error: null };
window.medae = state;

function fail(message) {
  state.error = message;
  $("status").textContent = message;
}

function parseCsv(text) {
  // candidates.csv holds numbers and a space-separated bbox: no quoting needed
  const lines = text.trim().split(/\r?\n/);
  if (lines.length < 2) return [];
  const head = lines[0].split(",");
  return lines.slice(1).map((line) => {
    const cells = line.split(",");
    return Object.fromEntries(head.map((h, i) => [h, cells[i]]));
  });
}

function axisCodes(affine) {
  // like nibabel's aff2axcodes: which world direction each voxel axis points to
  const pos = ["R", "A", "S"], neg = ["L", "P", "I"];
  let codes = "";
  for (let j = 0; j < 3; j++) {
    let best = 0;
    for (let i = 1; i < 3; i++) if (Math.abs(affine[i][j]) > Math.abs(affine[best][j])) best = i;
    codes += affine[best][j] >= 0 ? pos[best] : neg[best];
  }
  return codes;
}

function outlineOnly(vol) {
  // keep the voxels of each label that touch another value (6-neighbourhood): outlines
  const [nx, ny, nz] = [vol.hdr.dims[1], vol.hdr.dims[2], vol.hdr.dims[3]];
  const src = vol.img, out = new src.constructor(src.length);
  const sy = nx, sz = nx * ny;
  for (let z = 0; z < nz; z++) for (let y = 0; y < ny; y++) for (let x = 0; x < nx; x++) {
    const i = x + y * sy + z * sz, v = src[i];
    if (!v) continue;
    if (x === 0 || x === nx - 1 || y === 0 || y === ny - 1 || z === 0 || z === nz - 1 ||
        src[i - 1] !== v || src[i + 1] !== v || src[i - sy] !== v || src[i + sy] !== v ||
        src[i - sz] !== v || src[i + sz] !== v) out[i] = v;
  }
  vol.img = out;
}

function fact(name, value) {
  const dt = document.createElement("dt"), dd = document.createElement("dd");
  dt.textContent = name;
  dd.textContent = value;
  $("facts").append(dt, dd);
}

async function fetchOk(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status} ${r.statusText}`);
  return r;
}

async function main() {
  const id = new URLSearchParams(location.search).get("case");
  if (!id || id === "." || id === ".." || id.includes("/")) return fail("no case given");
  $("case").textContent = id;
  document.title = `${id} – medae`;
  const base = encodeURIComponent(id) + "/";
  const rec = await (await fetchOk(base + "result.json")).json();
  const candidates = parseCsv(await (await fetchOk(base + "candidates.csv")).text());
  const hasImage = (await fetch(base + "image.nii.gz", { method: "HEAD" })).ok;
  const row = rec.row || {};
  const threshold = Number(rec.threshold);
  fact("score", String(row.score));
  fact("flagged", row.flagged === "" || row.flagged === undefined ? "–"
       : Number(row.flagged) ? "yes" : "no");
  fact("threshold", `${threshold.toPrecision(4)} (${rec.threshold_rule || "?"})`);
  if (rec.brain) {  // a brain recipe (preprocess.brain): how the mask was made, and its volume
    fact("brain mask", `${Number(rec.brain_volume_cm3).toFixed(0)} cm³ (${rec.mask_rule || "?"})`);
  }
  for (const [name, r] of Object.entries(rec.registered || {})) {  // preprocess.registration
    const shift = Math.hypot(...(r.shift_mm || [0, 0, 0]));
    fact(`${name} registered`, `rotated ${Number(r.rotation_deg).toFixed(1)}°, moved `
         + `${shift.toFixed(1)} mm (mutual information ${r.mutual_information_before} → `
         + `${r.mutual_information})`);
  }
  if (rec.template) {  // preprocess.space template: the affine fit to the MNI template
    const t = rec.template;
    fact("template space", `${t.template}: scale ${Number(t.scale).toFixed(2)}, brain Dice `
         + `${Number(t.dice).toFixed(2)} (mutual information ${t.mutual_information})`);
  }
  const links = ["anomaly_map.nii.gz", "candidates.nii.gz", "candidates.csv",
                 "overlay_ortho.png", "overlay_mosaic.png"];
  if (hasImage) links.unshift("image.nii.gz");
  for (const name of links) {
    const a = document.createElement("a");
    a.href = base + name;
    a.textContent = name;
    $("files").append(a, " ");
  }

  const nv = new Niivue({
    backColor: [0, 0, 0, 1], show3Dcrosshair: true, isColorbar: true,
    multiplanarShowRender: SHOW_RENDER.ALWAYS, isOrientationTextVisible: true,
    crosshairColor: [0.2, 0.8, 1, 1], dragAndDropEnabled: false, loadingText: "loading...",
  });
  state.nv = nv;
  await nv.attachTo("gl");
  const background = hasImage ? "image.nii.gz" : "brain_mask.nii.gz";
  await nv.loadVolumes([
    { url: base + background, colormap: "gray" },
    { url: base + "anomaly_map.nii.gz", colormap: "warm", opacity: 0.8 },
    { url: base + "candidates.nii.gz", colormap: "green", opacity: 1 },
  ]);
  const [img, heat, cand] = nv.volumes;
  // the whole map's range (NiiVue's global_min/max look at the central part of the grid only)
  const slope = heat.hdr.scl_slope || 1, inter = heat.hdr.scl_inter || 0;
  const values = slope === 1 && inter === 0 ? heat.img  // medae writes no scaling: no copy
    : Float32Array.from(heat.img, (v) => v * slope + inter);
  let heatMin = Infinity, heatMax = -Infinity;
  for (const v of values) {
    if (v < heatMin) heatMin = v;
    if (v > heatMax) heatMax = v;
  }
  heat.cal_max = Math.max(heatMax, threshold * 1.0001);
  heat.cal_min = threshold;
  cand.cal_min = 0.5;
  cand.cal_max = 0.5001;
  img.colorbarVisible = false;
  cand.colorbarVisible = false;
  outlineOnly(cand);
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.updateGLVolume();

  fact("grid", `${img.hdr.dims.slice(1, 4).join("×")} voxels, ` +
       `${img.hdr.pixDims.slice(1, 4).map((v) => v.toPrecision(3)).join("×")} mm`);
  fact("orientation", `${axisCodes(img.hdr.affine)} (voxel axes of the input; the views ` +
       "are shown in world space, labels L/R/A/P/S/I)");
  if (!hasImage) {
    fact("background", "brain mask: this case was scored with --no-image");
  }

  // the threshold slider: what part of the heat map is coloured
  const slider = $("threshold");
  // from 0 to one step above the map's maximum (where nothing is coloured)
  const lo = Math.min(0, heatMin), top = Math.max(heatMax, threshold);
  const step = (top - lo) / 1000 || 1e-6;
  slider.min = lo;
  slider.max = top + step;
  slider.step = step;
  slider.value = threshold;
  slider.disabled = false;
  const voxelMm3 = Math.abs(img.hdr.pixDims[1] * img.hdr.pixDims[2] * img.hdr.pixDims[3]);
  const showThreshold = (v) => {  // the calibrated value exactly, then the slider's steps
    heat.cal_min = v;
    heat.cal_max = Math.max(heatMax, v * 1.0001 + 1e-9);
    nv.updateGLVolume();
    let n = 0;
    for (let i = 0; i < values.length; i++) if (values[i] >= v) n++;
    state.threshold = v;
    state.voxelsAbove = n;
    $("thresholdValue").textContent = v.toPrecision(4);
    $("thresholdNote").textContent = `${n} voxels at or above (${(n * voxelMm3).toFixed(0)} mm³)` +
      (Math.abs(v - threshold) < Number(slider.step) ? ", the calibrated threshold" : "");
  };
  slider.addEventListener("input", () => showThreshold(Number(slider.value)));
  showThreshold(threshold);
  $("outlines").addEventListener("change", (ev) => {
    nv.setOpacity(2, ev.target.checked ? 1 : 0);
  });

  // the candidate list: a click moves the crosshair to the candidate's centroid (world mm)
  $("nCandidates").textContent = `(${candidates.length})`;
  const body = $("candidates").tBodies[0];
  state.candidates = candidates.map((c) => ({
    id: Number(c.id), volume_mm3: Number(c.volume_mm3), max_score: Number(c.max_score),
    centroid: [Number(c.centroid_x_mm), Number(c.centroid_y_mm), Number(c.centroid_z_mm)],
  }));
  for (const c of state.candidates) {
    const tr = body.insertRow();
    tr.dataset.id = String(c.id);
    for (const text of [c.id, c.volume_mm3.toFixed(0), c.centroid.map((v) => v.toFixed(1))
                        .join(", "), c.max_score.toPrecision(3)]) {
      tr.insertCell().textContent = String(text);
    }
    tr.addEventListener("click", () => {
      nv.scene.crosshairPos = nv.mm2frac(c.centroid);
      nv.drawScene();
      nv.createOnLocationChange();
      for (const other of body.rows) other.classList.toggle("current", other === tr);
    });
  }
  nv.onLocationChange = (data) => {
    const mm = Array.from(data.mm).slice(0, 3).map((v) => v.toFixed(1)).join(", ");
    const value = (k) => (data.values && data.values[k] ? Number(data.values[k].value) : NaN);
    $("location").textContent = `crosshair ${mm} mm: scan ${value(0).toPrecision(4)}, ` +
      `heat ${value(1).toPrecision(3)}`;
  };
  $("status").textContent = "";
  state.ready = true;
}

main().catch((err) => fail(`cannot show this case: ${err.message || err}`));
