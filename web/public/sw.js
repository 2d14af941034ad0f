// Offline support for the demo: on install, caches the page, every file of the build (precache.json,
// written by vite.config.ts) and the bundled models. Models are served cache-first (large, never
// change); everything else network-first, so a new build shows up at once and the cache is the fallback.
const PREFIX = 'flute-demo-';

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const res = await fetch('./precache.json', { cache: 'no-cache' });
    const { version, files } = await res.json();
    const cache = await caches.open(PREFIX + version);
    await cache.addAll(['./', './precache.json', ...files]);
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    const res = await caches.match('./precache.json');
    const keep = res ? PREFIX + (await res.json()).version : null;
    for (const key of await caches.keys()) if (key.startsWith(PREFIX) && key !== keep) await caches.delete(key);
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET' || new URL(req.url).origin !== self.location.origin) return;
  const isModel = new URL(req.url).pathname.includes('/models/');
  event.respondWith((async () => {
    if (isModel) {
      const hit = await caches.match(req);
      if (hit) return hit;
    }
    try {
      return await fetch(req);
    } catch (e) {
      const hit = await caches.match(req, { ignoreSearch: req.mode === 'navigate' });
      if (hit) return hit;
      throw e;
    }
  })());
});
