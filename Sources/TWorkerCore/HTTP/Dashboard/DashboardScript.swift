extension DashboardPages {
    /// `GET /assets/dashboard.js` (application/javascript): the pool page and the job page.
    ///
    /// Plain JavaScript with no framework. Every value from the API enters the page through
    /// `textContent` or `createElement`; nothing is ever assigned to `innerHTML`, so a job id or a
    /// log line holding `<script>` shows as text. The log view is a small terminal model: ANSI
    /// SGR colours become classed spans, other escape sequences are dropped, a line's last
    /// `\r`-separated part wins, and Travis's `travis_fold:start:NAME` / `travis_fold:end:NAME`
    /// markers become collapsible `<details>`.
    public static let script: String = #"""
        'use strict';
        (function () {
          const POLL_MS = 2000;
          const FINAL_STATES = ['passed', 'failed', 'errored', 'cancelled'];

          // MARK: - DOM and API helpers

          function $(selector) { return document.querySelector(selector); }

          // Builds an element; `text` goes through textContent, never through the HTML parser.
          function el(tag, props, children) {
            const node = document.createElement(tag);
            for (const [key, value] of Object.entries(props || {})) {
              if (value === undefined || value === null || value === false) continue;
              if (key === 'text') node.textContent = String(value);
              else if (key === 'className') node.className = value;
              else if (key === 'dataset') Object.assign(node.dataset, value);
              else if (key === 'onclick') node.addEventListener('click', value);
              else node.setAttribute(key, value === true ? '' : String(value));
            }
            for (const child of children || []) {
              if (child === null || child === undefined) continue;
              node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
            }
            return node;
          }

          function present(value) { return value !== undefined && value !== null && value !== ''; }
          function show(value) { return present(value) ? String(value) : '\u2014'; }
          function classSafe(value) { return String(value || '').replace(/[^A-Za-z0-9_-]/g, ''); }

          function stateBadge(state) {
            return el('span', { className: 'state state-' + classSafe(state), text: show(state) });
          }

          function jobLink(id) {
            return el('a', { href: '/jobs/' + encodeURIComponent(id), text: id });
          }

          function pad(number) { return String(number).padStart(2, '0'); }

          function formatDuration(seconds) {
            if (typeof seconds !== 'number' || !isFinite(seconds)) return '\u2014';
            if (seconds < 60) return (seconds < 10 ? seconds.toFixed(1) : Math.floor(seconds)) + ' s';
            const whole = Math.floor(seconds);
            const hours = Math.floor(whole / 3600);
            const minutes = Math.floor((whole % 3600) / 60);
            return hours > 0 ? hours + ' h ' + pad(minutes) + ' m' : minutes + ' m ' + pad(whole % 60) + ' s';
          }

          function secondsSince(iso) {
            const time = Date.parse(iso);
            return isNaN(time) ? null : Math.max(0, (Date.now() - time) / 1000);
          }

          // "3.2 s ago", with the timestamp itself in the tooltip.
          function age(iso) {
            if (!present(iso)) return document.createTextNode('\u2014');
            const seconds = secondsSince(iso);
            return el('time', { datetime: iso, title: iso, text: seconds === null ? iso : formatDuration(seconds) + ' ago' });
          }

          function formatKiB(kib) {
            if (typeof kib !== 'number' || !isFinite(kib) || kib <= 0) return '\u2014';
            return (kib / 1024).toFixed(1) + ' MiB';
          }

          class ApiError extends Error {
            constructor(message, status) { super(message); this.status = status; }
          }

          async function request(method, path) {
            let response;
            try {
              response = await fetch(path, {
                method: method,
                credentials: 'same-origin',
                cache: 'no-store',
                headers: { 'Accept': 'application/json' },
              });
            } catch (error) {
              throw new ApiError('tworker is not answering (' + path + ')', 0);
            }
            let body = null;
            try { body = await response.json(); } catch (error) { body = null; }
            if (!response.ok) {
              const reason = body && typeof body.error === 'string' ? body.error : 'HTTP ' + response.status;
              throw new ApiError(method + ' ' + path + ': ' + reason, response.status);
            }
            return body;
          }
          function getJSON(path) { return request('GET', path); }
          function post(path) { return request('POST', path); }

          // MARK: - Banner and refresh time

          function showError(error) {
            const banner = $('#banner');
            if (!banner) return;
            const message = error && error.message ? error.message : String(error);
            const children = [message];
            if (error && (error.status === 401 || error.status === 403)) {
              children.push(' \u2014 ', el('a', { href: '/login', text: 'log in' }));
            }
            banner.replaceChildren(...children);
            banner.hidden = false;
          }

          function clearError() {
            const banner = $('#banner');
            if (banner) { banner.hidden = true; banner.replaceChildren(); }
          }

          function markUpdated() {
            const updated = $('#updated');
            if (updated) updated.textContent = 'updated ' + new Date().toLocaleTimeString();
          }

          function emptyRow(columns, message) {
            return el('tr', { className: 'empty' }, [el('td', { colspan: columns, text: message })]);
          }

          // MARK: - Pool page

          function poolPage() {
            let timer = null;
            let running = false;
            let again = false;

            // One POST button; the page refreshes at once after it so the new state shows.
            function actionButton(label, path, className) {
              const button = el('button', { type: 'button', className: className, text: label });
              button.addEventListener('click', async () => {
                button.disabled = true;
                try {
                  await post(path);
                  clearError();
                } catch (error) {
                  showError(error);
                } finally {
                  refresh();
                }
              });
              return button;
            }

            function renderStatus(status) {
              const host = $('#host-name');
              host.textContent = show(status.host) + ' \u00b7 master pid ' + show(status.master ? status.master.pid : null) + (status.paused ? ' \u00b7 paused' : '');
              const workers = Array.isArray(status.workers) ? status.workers : [];
              const counts = {};
              for (const worker of workers) counts[worker.state] = (counts[worker.state] || 0) + 1;
              $('#pool-summary').textContent = workers.length + (workers.length === 1 ? ' worker' : ' workers')
                + (workers.length ? ': ' + Object.entries(counts).map(([state, count]) => count + ' ' + state).join(', ') : '');
              const rows = workers.map((worker) => {
                const vmPath = '/api/workers/' + encodeURIComponent(worker.vm);
                const action = worker.state === 'paused'
                  ? actionButton('Resume', vmPath + '/resume', 'resume')
                  : actionButton('Pause', vmPath + '/pause', 'pause');
                return el('tr', { className: 'worker', dataset: { vm: String(worker.vm), state: String(worker.state) } }, [
                  el('td', { className: 'vm', text: show(worker.vm) }),
                  el('td', { className: 'wrap' }, [
                    stateBadge(worker.state),
                    present(worker.last_error) ? el('div', { className: 'error', text: worker.last_error }) : null,
                  ]),
                  el('td', null, [present(worker.job) ? jobLink(worker.job) : '\u2014']),
                  el('td', { text: present(worker.job) && typeof worker.job_elapsed === 'number' ? formatDuration(worker.job_elapsed) : '\u2014' }),
                  el('td', { className: 'num', text: show(worker.jobs_done) }),
                  el('td', { className: 'num', text: formatKiB(worker.rss_kib) }),
                  el('td', { className: 'num', text: show(worker.pid) }),
                  el('td', null, [age(worker.heartbeat_at)]),
                  el('td', null, [action]),
                ]);
              });
              $('#pool-rows').replaceChildren(...(rows.length ? rows : [emptyRow(9, 'no workers')]));
            }

            function renderQueues(body) {
              const queues = Array.isArray(body.queues) ? body.queues : [];
              $('#queue-rows').replaceChildren(...(queues.length ? queues.map((queue) => el('tr', { className: 'queue' }, [
                el('td', { text: show(queue.name) }),
                el('td', { className: 'num', text: show(queue.depth) }),
              ])) : [emptyRow(2, 'no queues')]));
              const failed = Array.isArray(body.failed) ? body.failed : [];
              $('#failed-count').textContent = '(' + failed.length + ')';
              $('#failed-rows').replaceChildren(...(failed.length ? failed.map((entry) => el('tr', { className: 'failure' }, [
                el('td', { text: show(entry.queue) }),
                el('td', null, [age(entry.failed_at)]),
                el('td', { className: 'wrap error', text: show(entry.error) }),
                el('td', null, [present(entry.payload)
                  ? el('details', null, [el('summary', { text: 'payload' }), el('pre', { text: entry.payload })])
                  : '\u2014']),
              ])) : [emptyRow(4, 'no failed jobs')]));
            }

            function renderJobs(body) {
              const jobs = Array.isArray(body.jobs) ? body.jobs : [];
              $('#job-rows').replaceChildren(...(jobs.length ? jobs.map((job) => el('tr', { className: 'job', dataset: { state: String(job.state) } }, [
                el('td', null, [jobLink(job.id)]),
                el('td', null, [stateBadge(job.state)]),
                el('td', { text: show(job.queue) }),
                el('td', { text: show(job.worker) }),
                el('td', { className: 'num', text: show(job.attempts) }),
                el('td', null, [age(job.queued_at)]),
                el('td', { className: 'num', text: formatDuration(job.duration_seconds) }),
                el('td', { className: 'num', text: show(job.exit_code) }),
                el('td', { className: 'wrap error', text: present(job.error) ? job.error : '' }),
              ])) : [emptyRow(9, 'no jobs')]));
            }

            function renderHosts(body) {
              const hosts = Array.isArray(body.hosts) ? body.hosts : [];
              $('#host-list').replaceChildren(...(hosts.length ? hosts.map((host) => {
                const workers = Array.isArray(host.workers) ? host.workers : [];
                return el('div', { className: 'host', dataset: { host: String(host.host) } }, [
                  el('h3', null, [
                    el('span', { text: show(host.host) }),
                    present(host.state) && host.state !== 'up' ? stateBadge(host.state) : null,
                    host.draining ? el('span', { className: 'state state-draining', text: 'draining' }) : null,
                    present(host.version) ? el('span', { className: 'muted', text: 'v' + host.version }) : null,
                    el('span', { className: 'muted' }, ['heartbeat ', age(host.last_heartbeat)]),
                  ]),
                  el('div', { className: 'table-wrap' }, [el('table', null, [
                    el('thead', null, [el('tr', null, ['VM', 'State', 'Job', 'PID', 'Heartbeat'].map((title) => el('th', { text: title })))]),
                    el('tbody', null, workers.length ? workers.map((worker) => el('tr', null, [
                      el('td', { text: show(worker.vm) }),
                      el('td', null, [stateBadge(worker.state)]),
                      el('td', null, [present(worker.job) ? jobLink(worker.job) : '\u2014']),
                      el('td', { className: 'num', text: show(worker.pid) }),
                      el('td', null, [age(worker.heartbeat_at)]),
                    ])) : [emptyRow(5, 'no workers')]),
                  ])]),
                ]);
              }) : [el('p', { className: 'muted', text: 'no hosts' })]));
            }

            // Polls every endpoint; each part renders on its own so one failing endpoint
            // leaves the others current.
            async function refresh() {
              if (running) { again = true; return; }
              running = true;
              clearTimeout(timer);
              const state = $('#job-filter').value;
              const jobsPath = '/api/jobs?limit=100' + (state ? '&state=' + encodeURIComponent(state) : '');
              const parts = [
                ['/api/status', renderStatus],
                ['/api/queues', renderQueues],
                [jobsPath, renderJobs],
                ['/api/hosts', renderHosts],
              ];
              const results = await Promise.allSettled(parts.map(([path]) => getJSON(path)));
              let firstError = null;
              results.forEach((result, index) => {
                if (result.status === 'fulfilled') {
                  try { parts[index][1](result.value || {}); } catch (error) { firstError = firstError || error; }
                } else {
                  firstError = firstError || result.reason;
                }
              });
              if (firstError) showError(firstError); else { clearError(); markUpdated(); }
              document.body.dataset.loaded = 'true';
              running = false;
              if (again) { again = false; refresh(); return; }
              timer = setTimeout(refresh, POLL_MS);
            }

            $('#job-filter').addEventListener('change', refresh);
            refresh();
          }

          // MARK: - ANSI and the log view

          // CSI sequences (colour is `m`), OSC and string sequences, two-byte escapes, then
          // any other control character but tab.
          const ESCAPES = /\x1b\[([0-?]*)[ -\/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\|$)|\x1b[P^_X][^\x1b]*(?:\x1b\\|$)|\x1b[ -\/]*[0-~]?|[\x00-\x08\x0b-\x1f\x7f]/g;
          const FOLD_MARKER = /^travis_fold:(start|end):(\S+)$/;

          function plainText(text) { return text.replace(ESCAPES, ''); }

          function applySgr(params, state) {
            const codes = params === '' ? [0] : params.split(/[;:]/).map((code) => (code === '' ? 0 : Number(code)));
            for (let i = 0; i < codes.length; i++) {
              const code = codes[i];
              if (code === 0) { state.fg = null; state.bg = null; state.bold = false; }
              else if (code === 1) state.bold = true;
              else if (code === 22) state.bold = false;
              else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) state.fg = code;
              else if (code === 39) state.fg = null;
              else if ((code >= 40 && code <= 47) || (code >= 100 && code <= 107)) state.bg = code;
              else if (code === 49) state.bg = null;
              // 256-colour and RGB forms: skip their arguments so they are not read as codes.
              else if (code === 38 || code === 48) i += codes[i + 1] === 5 ? 2 : codes[i + 1] === 2 ? 4 : 0;
            }
          }

          function sgrClasses(state) {
            const classes = [];
            if (state.bold) classes.push('ansi-bold');
            if (state.fg !== null) classes.push('ansi-fg-' + state.fg);
            if (state.bg !== null) classes.push('ansi-bg-' + state.bg);
            return classes.join(' ');
          }

          // Renders one line's text into `line`, updating the SGR state as codes go by.
          function renderAnsi(text, state, line) {
            let last = 0;
            const emit = (chunk) => {
              if (chunk === '') return;
              const classes = sgrClasses(state);
              line.appendChild(classes ? el('span', { className: classes, text: chunk }) : document.createTextNode(chunk));
            };
            ESCAPES.lastIndex = 0;
            let match;
            while ((match = ESCAPES.exec(text)) !== null) {
              emit(text.slice(last, match.index));
              if (match[2] === 'm') applySgr(match[1], state);
              last = ESCAPES.lastIndex;
              if (match[0] === '') ESCAPES.lastIndex++;
            }
            emit(text.slice(last));
          }

          function skipAnsi(text, state) {
            ESCAPES.lastIndex = 0;
            let match;
            while ((match = ESCAPES.exec(text)) !== null) {
              if (match[2] === 'm') applySgr(match[1], state);
              if (match[0] === '') ESCAPES.lastIndex++;
            }
          }

          // Splits a raw line (no \n) into its fold markers and the one part that shows.
          // Travis writes a marker as its own \r-part ("travis_fold:start:git\r\x1b[0K$ git clone"),
          // so markers are taken out first; of the rest the last part with visible text wins,
          // as on a terminal where \r rewrites the line.
          function analyseLine(raw) {
            const markers = [];
            const parts = [];
            for (const part of raw.split('\r')) {
              const marker = FOLD_MARKER.exec(plainText(part).trim());
              if (marker) markers.push({ kind: marker[1], name: marker[2] });
              else parts.push(part);
            }
            let shown = -1;
            for (let i = parts.length - 1; i >= 0; i--) {
              if (plainText(parts[i]) !== '') { shown = i; break; }
            }
            return { markers: markers, parts: parts, shown: shown };
          }

          class LogView {
            constructor(root) {
              this.root = root;
              this.stack = [];
              this.state = { fg: null, bg: null, bold: false };
              this.pending = '';
              this.live = null;
              this.count = 0;
            }

            get container() {
              return this.stack.length ? this.stack[this.stack.length - 1].body : this.root;
            }

            write(text) {
              const follow = this.root.scrollHeight - this.root.scrollTop - this.root.clientHeight < 40;
              const lines = (this.pending + text).split('\n');
              this.pending = lines.pop();
              for (const line of lines) this.commit(line);
              this.renderLive();
              if (follow) this.root.scrollTop = this.root.scrollHeight;
            }

            // The log is final: its last line, even without \n, is a line.
            finish() {
              if (this.pending !== '') {
                const line = this.pending;
                this.pending = '';
                this.commit(line);
              }
              this.renderLive();
            }

            newLine(live) {
              const line = el('div', { className: live ? 'log-line live' : 'log-line' });
              line.dataset.n = String(this.count + 1);
              if (!live) this.count += 1;
              return line;
            }

            // Renders the shown part of an analysed line, carrying the SGR state through the
            // overwritten parts too (a colour set before a \r still holds after it).
            renderParts(analysed, state, line) {
              analysed.parts.forEach((part, index) => {
                if (index === analysed.shown) renderAnsi(part, state, line);
                else skipAnsi(part, state);
              });
            }

            commit(raw) {
              if (this.live) { this.live.remove(); this.live = null; }
              const analysed = analyseLine(raw);
              const opens = analysed.markers.some((marker) => marker.kind === 'start');
              if (analysed.markers.length === 0) {
                const line = this.newLine(false);
                this.renderParts(analysed, this.state, line);
                this.container.appendChild(line);
                return;
              }
              // Text on an end marker's line belongs inside the fold; on a start marker's line
              // it is the fold's title.
              let title = null;
              if (analysed.shown >= 0) {
                title = this.newLine(false);
                this.renderParts(analysed, this.state, title);
                if (!opens) this.container.appendChild(title);
              } else {
                analysed.parts.forEach((part) => skipAnsi(part, this.state));
              }
              for (const marker of analysed.markers) {
                if (marker.kind === 'end') this.closeFold(marker.name);
                else this.openFold(marker.name);
              }
              if (opens) {
                const summary = this.stack[this.stack.length - 1].summary;
                summary.insertBefore(title || this.newLine(false), summary.firstChild);
              }
            }

            // A fold is open while its stage runs and closes when the stage ends, unless the
            // reader has toggled it.
            openFold(name) {
              const summary = el('summary', null, [el('span', { className: 'fold-name', text: name })]);
              const body = el('div', { className: 'fold-body' });
              const details = el('details', { className: 'fold', open: true, dataset: { fold: name } }, [summary, body]);
              summary.addEventListener('click', () => { details.dataset.toggled = 'true'; });
              this.container.appendChild(details);
              this.stack.push({ name: name, details: details, summary: summary, body: body });
            }

            closeFold(name) {
              let index = this.stack.length - 1;
              while (index >= 0 && this.stack[index].name !== name) index--;
              if (index < 0) return;
              for (const fold of this.stack.splice(index)) {
                if (fold.details.dataset.toggled !== 'true') fold.details.open = false;
              }
            }

            // The line still being written shows as it is; it is replaced once its \n arrives.
            renderLive() {
              if (this.live) { this.live.remove(); this.live = null; }
              const text = this.pending.replace(/\x1b[^A-Za-z~]*$/, '');
              if (text === '') return;
              const analysed = analyseLine(text);
              if (analysed.shown < 0 || /^\s*travis_fold:/.test(plainText(text))) return;
              const line = this.newLine(true);
              this.renderParts(analysed, Object.assign({}, this.state), line);
              this.live = line;
              this.container.appendChild(line);
            }
          }

          // MARK: - Job page

          function jobPage() {
            const main = $('#job-page');
            const id = main.dataset.jobId;
            const base = '/api/jobs/' + encodeURIComponent(id);
            const view = new LogView($('#log'));
            const cancel = $('#cancel');
            let next = 1;
            let source = null;
            let logFinal = false;
            let recordFinal = false;
            let missing = false;
            let recordTimer = null;

            function setLogStatus(text) { $('#log-status').textContent = text; }

            function renderRecord(record) {
              const keys = Object.keys(record);
              const order = ['id', 'state'].filter((key) => keys.includes(key)).concat(keys.filter((key) => key !== 'id' && key !== 'state'));
              const items = [];
              for (const key of order) {
                const value = record[key];
                items.push(el('dt', { text: key }), el('dd', { dataset: { field: key }, text: value === null || value === undefined ? '' : typeof value === 'object' ? JSON.stringify(value) : String(value) }));
              }
              $('#record').replaceChildren(...items);
              const state = $('#job-state');
              state.textContent = show(record.state);
              state.className = 'state state-' + classSafe(record.state);
              main.dataset.state = String(record.state || '');
              recordFinal = FINAL_STATES.includes(record.state);
              cancel.hidden = recordFinal;
              if (recordFinal) $('#action-status').textContent = '';
            }

            async function loadRecord() {
              clearTimeout(recordTimer);
              try {
                renderRecord(await getJSON(base));
                clearError();
                markUpdated();
              } catch (error) {
                if (error.status === 404) { noSuchJob(error); return; }
                showError(error);
              }
              if (!recordFinal) recordTimer = setTimeout(loadRecord, POLL_MS);
            }

            function noSuchJob(error) {
              missing = true;
              if (source) { source.close(); source = null; }
              cancel.hidden = true;
              showError(error);
              setLogStatus('');
            }

            function append(entry) {
              if (!entry || typeof entry.n !== 'number' || entry.n < next) return;
              view.write(typeof entry.text === 'string' ? entry.text : '');
              next = entry.n + 1;
            }

            // Catches up with the JSON log, then follows the stream from the next entry. After a
            // dropped stream it starts again here, from this page's own `next`.
            async function followLog() {
              if (logFinal || missing) return;
              try {
                const body = await getJSON(base + '/log?from=' + next);
                for (const entry of body.entries || []) append(entry);
                if (typeof body.next === 'number' && body.next > next) next = body.next;
                if (body.final) { finishLog(); return; }
              } catch (error) {
                if (error.status === 404) { noSuchJob(error); return; }
                showError(error);
                setTimeout(followLog, POLL_MS);
                return;
              }
              setLogStatus('live');
              source = new EventSource(base + '/log/stream?from=' + next);
              source.addEventListener('log', (event) => {
                try { append(JSON.parse(event.data)); } catch (error) { showError(error); }
              });
              source.addEventListener('final', async (event) => {
                if (source) { source.close(); source = null; }
                // An entry the stream skipped (it was reconnecting) is fetched before the end.
                let last = 0;
                try { last = JSON.parse(event.data).n || 0; } catch (error) { last = 0; }
                if (last >= next) {
                  try {
                    const body = await getJSON(base + '/log?from=' + next);
                    for (const entry of body.entries || []) append(entry);
                  } catch (error) { showError(error); }
                }
                finishLog();
              });
              source.addEventListener('error', () => {
                if (logFinal || !source) return;
                source.close();
                source = null;
                setLogStatus('reconnecting\u2026');
                setTimeout(followLog, POLL_MS);
              });
            }

            function finishLog() {
              logFinal = true;
              view.finish();
              main.dataset.logFinal = 'true';
              setLogStatus('complete');
              loadRecord();
            }

            cancel.addEventListener('click', async () => {
              cancel.disabled = true;
              $('#action-status').textContent = 'cancelling\u2026';
              try {
                await post(base + '/cancel');
                $('#action-status').textContent = 'cancel requested';
              } catch (error) {
                $('#action-status').textContent = '';
                showError(error);
              } finally {
                cancel.disabled = false;
                loadRecord();
              }
            });

            setLogStatus('loading\u2026');
            loadRecord();
            followLog();
          }

          function start() {
            const page = document.body.dataset.page;
            if (page === 'pool') poolPage();
            else if (page === 'job') jobPage();
          }

          if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
          else start();
        })();

        """#
}
