// Workload: a Node.js (V8) heap of objects, arrays and strings, like a web service cache.
// Builds about the MiB given as the first argument (default 200), then SIGUSR1 to the parent.
const target = Number(process.argv[2] || 200) * 1024 * 1024;
let seed = 1;
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
const words = Array.from({ length: 4000 }, () =>
  Math.random().toString(36).slice(2, 4 + Math.floor(rnd() * 8)));
const cache = new Map();
let bytes = 0, i = 0;
while (bytes < target) {
  const user = {
    id: i, name: `${words[i % 4000]} ${words[(i * 7) % 4000]}`,
    email: `${words[(i * 3) % 4000]}@example.org`, score: rnd() * 1000,
    history: Array.from({ length: 1 + Math.floor(rnd() * 8) }, () => Math.floor(rnd() * 1e6)),
    profile: { lang: rnd() < 0.5 ? "en" : "pt", active: rnd() < 0.8, visits: Math.floor(rnd() * 500) },
  };
  cache.set(`session:${i}`, user);
  bytes += 260; i++;
}
process.kill(process.ppid, "SIGUSR1");
setTimeout(() => {}, 3600 * 1000);
