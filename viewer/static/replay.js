// The replay player: any recorded episode of the focused run, live or finished, on a board of its own.
//
// The viewer re-simulates the record and sends its boards in chunks
// (GET /api/runs/{id}/episodes/{name}?from=K&count=N, see docs/VIEWER.md); the player keeps the
// chunks it fetched, plays them at 1x-100x (1x: `BASE_PPS` pieces a second) on its own
// animation loop, which runs only while playing, and scrubs to any piece. It draws only on its
// own canvases: a replay never touches the live board.
//
// A game of hours is thousands of chunks, so the player keeps the `CACHED` it used last, fetches
// a chunk the scrubber reaches only once the drag rests (`SCRUB_REST`), and cancels the fetches
// of chunks it no longer needs: a drag across the game costs one request, not one per chunk.

import { boardRows, drawBoard, drawPieces } from "./board.js";
import { escape } from "./runlist.js";

const CHUNK = 200;     // frames per request: ~50 KB
const AHEAD = 50;      // fetch the next chunk this many pieces before reaching it
const BASE_PPS = 2;    // pieces per second at 1x
const RELIST = 5000;   // ms between listings of the followed run's records (a live run writes new ones)
const CACHED = 32;     // chunks kept (~1.6 MB of frames), the least recently shown dropped first
const SCRUB_REST = 150;  // ms the scrubber must rest on a piece not cached before its chunk is fetched

export class ReplayPlayer {
  // `el`: the panel's elements by role (see index.html, #replay).
  constructor(el) {
    this.el = el;
    this.run = null;        // the run whose records are listed
    this.game = null;       // {run, name, record}: the episode loaded
    this.chunks = new Map();  // chunk index -> frames, the least recently shown first
    this.loading = new Map();  // chunk index -> {done: Promise, controller: AbortController}
    this.resting = 0;       // the timer of a scrub waiting for the drag to rest
    this.piece = 0;
    this.total = 0;         // frames in the episode: pieces + 1
    this.playing = false;
    this.last = 0;          // time of the previous animation frame while playing
    this.due = 0;           // pieces owed to the clock (fractions of a piece at low speed)
    el.best.addEventListener("click", () => this.open("best"));
    el.list.addEventListener("change", () => el.list.value && this.open(el.list.value));
    el.list.addEventListener("focus", () => this.list());  // a live run keeps new records: list them afresh
    el.play.addEventListener("click", () => (this.playing ? this.pause() : this.play()));
    el.step.addEventListener("click", () => { this.pause(); this.show(this.piece + 1); });
    el.back.addEventListener("click", () => { this.pause(); this.show(this.piece - 1); });
    el.scrub.addEventListener("input", () => this.scrub(Number(el.scrub.value)));
    this.tick = this.tick.bind(this);
    this.listed = "";
    this.controls();
    setInterval(() => this.list(), RELIST);
  }

  // The focused run changed: list its records (the episode playing, if any, goes on).
  follow(run) {
    if (run === this.run) return;
    this.run = run;
    this.el.panel.hidden = !run;
    this.list();
  }

  async list() {
    const run = this.run;
    if (!run) return;
    const body = await this.get(`/api/runs/${encodeURIComponent(run)}/episodes`);
    if (run !== this.run) return;
    if (body.error) {  // a periodic listing that failed leaves the replay playing, and its line, alone
      if (!this.game) this.say(body.error);
      return;
    }
    const kept = body.records || [];
    const options = `<option value="">${kept.length ? "recorded episodes…" : "no records"}</option>` +
      kept.map((r) => `<option value="${escape(r.name)}"${r.error ? " disabled" : ""}>${label(r)}</option>`).join("");
    if (options !== this.listed) {  // rewritten only when it changed: the user may be choosing from it
      const chosen = this.el.list.value;
      this.el.list.innerHTML = this.listed = options;
      if (kept.some((r) => r.name === chosen)) this.el.list.value = chosen;
    }
    this.el.best.disabled = !kept.some((r) => r.name === "best" && !r.error);
    if (!this.game) this.say(body.records_note || "");
  }

  // Load episode `name` of the focused run and show its first board.
  async open(name) {
    this.pause();
    clearTimeout(this.resting);
    this.resting = 0;
    this.game = { run: this.run, name, record: null };
    this.forget();
    this.total = 0;
    this.say(`loading ${name}…`);
    await this.show(0);
  }

  play() {
    if (!this.game || this.playing) return;
    if (this.piece >= this.total - 1) this.show(0);
    this.playing = true;
    this.last = performance.now();
    this.due = 0;
    this.controls();
    requestAnimationFrame(this.tick);
  }

  pause() {
    this.playing = false;
    this.controls();
  }

  tick(now) {
    if (!this.playing) return;
    this.due += (now - this.last) / 1000 * BASE_PPS * Number(this.el.speed.value);
    this.last = now;
    const steps = Math.floor(this.due);
    if (steps > 0 && this.frame(this.piece + 1)) {  // not loaded yet: wait for it, owing nothing
      this.due -= steps;
      this.show(Math.min(this.piece + steps, this.total - 1));
    } else if (steps > 0) {
      this.due = 0;
      if (!this.resting) this.load(this.piece + 1);  // a drag that has not rested fetches nothing
    }
    if (this.piece >= this.total - 1) this.pause();
    else requestAnimationFrame(this.tick);
  }

  // The scrubber moved to `piece`: shown at once if cached, else fetched when the drag rests there.
  scrub(piece) {
    clearTimeout(this.resting);
    this.resting = 0;
    if (this.frame(piece)) {
      this.show(piece);
      return;
    }
    this.piece = piece;  // a chunk arriving for an earlier position is not drawn
    this.resting = setTimeout(() => { this.resting = 0; this.show(piece); }, SCRUB_REST);
  }

  // Show frame `piece` (clamped), fetching its chunk first if need be.
  async show(piece) {
    if (!this.game) return;
    piece = Math.max(0, this.total ? Math.min(piece, this.total - 1) : piece);
    this.piece = piece;
    this.cancel(piece);
    const frame = this.frame(piece) || await this.load(piece);
    if (!frame || this.piece !== piece) return;  // failed, or the user moved on meanwhile
    this.draw(frame);
    if (piece % CHUNK >= CHUNK - AHEAD) this.load(piece + AHEAD);
  }

  // The frame if its chunk is cached, which makes that chunk the most recently used.
  frame(piece) {
    const index = Math.floor(piece / CHUNK);
    const chunk = this.chunks.get(index);
    if (!chunk) return undefined;
    this.chunks.delete(index);
    this.chunks.set(index, chunk);
    return chunk[piece % CHUNK];
  }

  // Fetch the chunk holding `piece` (once at a time); resolves to that frame.
  async load(piece) {
    const game = this.game;
    const index = Math.floor(piece / CHUNK);
    if (!game || (this.total && piece >= this.total)) return undefined;
    if (!this.chunks.has(index) && !this.loading.has(index)) {
      const url = `/api/runs/${encodeURIComponent(game.run)}/episodes/${encodeURIComponent(game.name)}` +
        `?from=${index * CHUNK}&count=${CHUNK}`;
      const loading = { controller: new AbortController() };
      loading.done = this.get(url, loading.controller.signal).then((body) => this.take(game, index, body, loading));
      this.loading.set(index, loading);
    }
    await this.loading.get(index)?.done;
    return this.frame(piece);
  }

  take(game, index, body, loading) {
    if (this.loading.get(index) === loading) this.loading.delete(index);
    if (game !== this.game || body.aborted) return;
    if (body.error) {
      this.say(body.error);
      this.pause();
      return;
    }
    const r = body.record;
    if (game.record && (r.seed !== game.record.seed || r.episode !== game.record.episode)) {
      // best.rec was replaced by a better game while we played the old one: start over with the new one
      this.forget();
      this.say(`${game.name} is now episode ${r.episode}: replaying that one`);
      queueMicrotask(() => this.show(0));
    }
    game.record = r;
    this.total = r.frames;
    this.chunks.set(index, body.frames);
    for (const old of this.chunks.keys()) {
      if (this.chunks.size <= CACHED) break;
      this.chunks.delete(old);
    }
    this.el.scrub.max = String(this.total - 1);
    this.controls();
  }

  // Cancel the fetches of chunks that showing `piece` does not need (its own and the one after).
  cancel(piece) {
    const needed = Math.floor(piece / CHUNK);
    for (const [index, loading] of this.loading) {
      if (index !== needed && index !== needed + 1) {
        loading.controller.abort();
        this.loading.delete(index);
      }
    }
  }

  // Drop every chunk, cached or on its way: another game, or another record under the same name.
  forget() {
    for (const loading of this.loading.values()) loading.controller.abort();
    this.loading.clear();
    this.chunks.clear();
  }

  draw(frame) {
    const r = this.game.record;
    const board = this.el.board;
    drawBoard(board, boardRows(frame.board));
    drawPieces(this.el.next, frame.next || []);
    board.shown = frame;  // what the canvas shows, for tests
    this.el.scrub.value = String(this.piece);
    this.say(`${this.game.run}, ${this.game.name} (episode ${r.episode}, seed ${r.seed}): ` +
      `piece ${frame.step} of ${r.pieces}, ${frame.lines} lines, score ${frame.score}`);
  }

  controls() {
    const ready = !!(this.game && this.total);
    for (const b of [this.el.play, this.el.step, this.el.back, this.el.scrub]) b.disabled = !ready;
    this.el.play.textContent = this.playing ? "Pause" : "Play";
    this.el.game.hidden = !this.game;
  }

  say(text) {
    if (this.el.info.textContent !== text) this.el.info.textContent = text;
  }

  // GET `url`: its body if ok, else `{error}` to show, or `{aborted}` when it was cancelled.
  async get(url, signal) {
    try {
      const response = await fetch(url, { signal });
      const body = await response.json();
      return body.ok ? body : { error: body.error || `replay: HTTP ${response.status}` };
    } catch (err) {
      return err.name === "AbortError" ? { aborted: true } : { error: `replay: ${err}` };
    }
  }
}

function label(r) {
  const name = escape(r.name);
  return r.error ? `${name}: damaged` : `${name}: ${r.lines} lines, ${r.pieces} pieces (ep ${r.episode})`;
}
