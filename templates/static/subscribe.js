// The sign-up form: the reader's own time zone, so each step arrives at their local hour.
// A file of its own, as the pages' Content-Security-Policy runs no inline script.
(function () {
  var field = document.getElementById("timezone");
  if (!field) {
    return;
  }
  try {
    field.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (e) {
    // An old browser: the seminar's own time zone applies.
  }
})();
