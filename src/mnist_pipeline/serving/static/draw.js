// The drawing page: pointer strokes on the canvas, sent as a PNG to /predict at most every
// 100 ms while drawing; the answer drawn as bars, the 28x28 input, the hidden grid.
"use strict";

const THROTTLE_MS = 100;
const STRONGEST = 8; // how many of the most active units show their weights

const pad = document.getElementById("pad");
const pen = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const bars = document.getElementById("bars");
const grid = document.getElementById("grid");
const strongest = document.getElementById("strongest");
let weights = null; // {units, data: Uint8Array(units * 784)} of the first dense layer

// Ten bar rows, made once.
for (let digit = 0; digit < 10; digit++) {
  bars.insertAdjacentHTML("beforeend",
    `<div class="bar" data-digit="${digit}"><span class="digit">${digit}</span>` +
    `<span class="track"><span class="fill"></span></span><span class="value"></span></div>`);
}

// ---- drawing ----------------------------------------------------------------------------
let last = null;      // the previous point of the stroke being drawn
let hasInk = false;
let generation = 0;   // bumped by "clear": answers to older drawings are dropped

pen.lineWidth = 20;
pen.lineCap = "round";
pen.lineJoin = "round";
pen.strokeStyle = pen.fillStyle = "#fff";

function point(event) {
  const box = pad.getBoundingClientRect();
  return {
    x: (event.clientX - box.left) * pad.width / box.width,
    y: (event.clientY - box.top) * pad.height / box.height,
  };
}

pad.addEventListener("pointerdown", (event) => {
  pad.setPointerCapture(event.pointerId);
  last = point(event);
  pen.beginPath();
  pen.arc(last.x, last.y, pen.lineWidth / 2, 0, 2 * Math.PI);
  pen.fill();
  hasInk = true;
  schedule();
});

pad.addEventListener("pointermove", (event) => {
  if (last === null) return;
  // A pen or a fast finger gives several points per frame: draw them all.
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const each of events.length ? events : [event]) {
    const next = point(each);
    pen.beginPath();
    pen.moveTo(last.x, last.y);
    pen.lineTo(next.x, next.y);
    pen.stroke();
    last = next;
  }
  schedule();
});

for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => { last = null; schedule(); });
}

document.getElementById("clear").addEventListener("click", () => {
  pen.clearRect(0, 0, pad.width, pad.height);
  hasInk = false;
  generation++;
  reset();
});

// ---- asking the network, throttled --------------------------------------------------------
let timer = null, inFlight = false, dirty = false, lastSent = -Infinity;

function schedule() {
  dirty = true;
  busy(true);
  if (timer !== null || inFlight) return; // the request in flight schedules the next one
  timer = setTimeout(ask, Math.max(0, lastSent + THROTTLE_MS - performance.now()));
}

async function ask() {
  timer = null;
  if (!dirty || !hasInk) return busy(false);
  dirty = false;
  inFlight = true;
  lastSent = performance.now();
  const asked = generation;
  try {
    const png = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
    const response = await fetch("predict", {
      method: "POST", headers: {"Content-Type": "image/png"}, body: png,
    });
    const answer = await response.json();
    if (asked !== generation) return;
    if (response.ok) show(answer);
    else message(answer.detail || response.statusText);
  } catch (error) {
    message(`no answer from the server: ${error}`);
  } finally {
    inFlight = false;
    if (dirty) schedule();
    else busy(false);
  }
}

// Whether an answer is still to come (the browser test waits for "0").
function busy(yes) {
  document.body.dataset.busy = yes ? "1" : "0";
}

// ---- showing the answer ------------------------------------------------------------------
function show(answer) {
  const p = answer.probabilities;
  document.getElementById("guess").textContent = answer.guess;
  document.getElementById("confidence").textContent = `${(100 * p[answer.guess]).toFixed(1)}%`;
  bars.querySelectorAll(".bar").forEach((row, digit) => {
    row.classList.toggle("top", digit === answer.guess);
    row.querySelector(".fill").style.width = `${100 * p[digit]}%`;
    row.querySelector(".value").textContent = p[digit].toFixed(3);
  });
  const image = seen.createImageData(28, 28);
  answer.input.flat().forEach((value, i) => {
    image.data.set([255 * value, 255 * value, 255 * value, 255], 4 * i);
  });
  seen.putImageData(image, 0, 0);
  if (answer.hidden) showHidden(answer.hidden);
  message("");
  document.body.dataset.state = "answered";
}

function showHidden(hidden) {
  const top = Math.max(...hidden, 1e-6);
  const order = hidden.map((value, unit) => [value, unit]).sort((a, b) => b[0] - a[0]);
  const strong = new Set(order.slice(0, STRONGEST).filter(([v]) => v > 0).map(([, u]) => u));
  grid.querySelectorAll("div").forEach((cell, unit) => {
    const level = Math.max(0, hidden[unit]) / top;
    cell.style.background = `rgb(${255 * level}, ${200 * level}, ${40 * level})`;
    cell.title = `unit ${unit}: ${hidden[unit].toFixed(3)}`;
    cell.classList.toggle("strong", strong.has(unit));
  });
  strongest.replaceChildren(...[...strong].map((unit) => weightImage(unit, hidden[unit])));
}

function weightImage(unit, activation) {
  const figure = document.createElement("figure");
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 28;
  const context = canvas.getContext("2d");
  const image = context.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const w = (weights.data[unit * 784 + i] - 128) / 127; // -1..1: blue..white..red
    const rgb = w > 0 ? [255, 255 * (1 - w), 255 * (1 - w)] : [255 * (1 + w), 255 * (1 + w), 255];
    image.data.set([...rgb, 255], 4 * i);
  }
  context.putImageData(image, 0, 0);
  const caption = document.createElement("figcaption");
  caption.textContent = `#${unit}: ${activation.toFixed(1)}`;
  caption.title = `unit ${unit}, activation ${activation.toFixed(3)}`;
  figure.append(canvas, caption);
  return figure;
}

function reset() {
  document.getElementById("guess").textContent = "–";
  document.getElementById("confidence").textContent = "";
  bars.querySelectorAll(".bar").forEach((row) => {
    row.classList.remove("top");
    row.querySelector(".fill").style.width = "0";
    row.querySelector(".value").textContent = "";
  });
  seen.clearRect(0, 0, 28, 28);
  grid.querySelectorAll("div").forEach((cell) => {
    cell.style.background = "";
    cell.title = "";
    cell.classList.remove("strong");
  });
  strongest.replaceChildren();
  message("");
  document.body.dataset.state = "empty";
}

function message(text) {
  document.getElementById("message").textContent = text;
}

// ---- the model ----------------------------------------------------------------------------
fetch("model").then((response) => response.json()).then((model) => {
  document.getElementById("model").textContent = `Model: ${model.description}`;
  if (!model.weights) return; // no dense first layer (e.g. a CNN): no grid to show
  const bytes = atob(model.weights.data);
  weights = {units: model.weights.units, data: Uint8Array.from(bytes, (c) => c.charCodeAt(0))};
  const neuron = model.activation ? `${model.activation} of a weighted sum` : "a weighted sum";
  document.getElementById("grid-explain").textContent =
    `Each cell is one of the ${weights.units} hidden neurons, brighter when more active: ` +
    `each hidden neuron is ${neuron} of the 784 pixels.`;
  grid.style.gridTemplateColumns = `repeat(${Math.min(16, weights.units)}, 18px)`;
  grid.replaceChildren(...Array.from({length: weights.units}, () => document.createElement("div")));
  document.getElementById("hidden-panel").hidden = false;
}).catch((error) => message(`cannot read the model: ${error}`));
