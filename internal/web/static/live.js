// Follows a running deploy's log: each server-sent event is one line of it. When the
// deploy ends, the page is loaded again, to show its outcome and steps.
(function () {
  var log = document.getElementById("log");
  if (!log || !log.dataset.live) return;
  var status = document.getElementById("live-status");
  var es = new EventSource(log.dataset.live);
  es.onmessage = function (e) {
    var atEnd = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    log.appendChild(document.createTextNode(e.data + "\n"));
    if (atEnd) window.scrollTo(0, document.body.scrollHeight);
  };
  es.addEventListener("end", function () {
    es.close();
    if (status) status.textContent = "finished";
    window.location.reload();
  });
  es.onerror = function () {
    if (status) status.textContent = "connection lost: reload to follow again";
  };
})();
